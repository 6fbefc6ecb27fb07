"""The dashboard's ASGI app: three routes over `Sources`, behind one gate.

Routes::

    GET /             the page (`nixdist.web.page`), which polls api/status
    GET /api/status   `StatusReport.to_json()` (machines, running builds, recent builds)
    GET /metrics      Prometheus exposition (`nixdist.web.metrics`)

The gate, in front of every route:

- with a token, a request must carry ``Authorization: Bearer <token>`` or ``?token=<token>``
  (compared in constant time), else 401;
- without one (allowed on loopback only, see `nixdist.web.server`), the ``Host`` header must
  name a loopback host, so that a web page elsewhere cannot read the dashboard through a DNS
  name rebound to 127.0.0.1.

Handlers are plain functions: Starlette runs them in its thread pool, where the blocking reads
(SQLite, slot locks, the machines file) belong. This is the web edge that turns errors into
answers: a `NixdistError` (a broken machines file, an unreadable database) becomes a 503 with
its one-line message, which the page shows.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from nixdist.errors import NixdistError
from nixdist.web.metrics import render_metrics
from nixdist.web.page import CONTENT_SECURITY_POLICY, PAGE
from nixdist.web.server import is_loopback_host

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from nixdist.web.sources import Sources

_NO_STORE: Final = {"Cache-Control": "no-store"}
_PAGE_HEADERS: Final = {
    **_NO_STORE,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",  # a ?token= must not leak through links
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def create_app(sources: Sources, *, token: str | None = None) -> Starlette:
    """The dashboard app; with `token`, every request must present it."""

    def page(_request: Request) -> Response:
        return HTMLResponse(PAGE, headers=_PAGE_HEADERS)

    def api_status(_request: Request) -> Response:
        try:
            data = sources.status().to_json()
        except NixdistError as err:
            return _json({"error": str(err)}, status_code=503)
        return _json(data)

    def metrics(request: Request) -> Response:
        try:
            body, content_type = render_metrics(sources, request.headers.get("accept", ""))
        except NixdistError as err:
            return PlainTextResponse(f"{err}\n", status_code=503, headers=_NO_STORE)
        return Response(body, media_type=content_type, headers=_NO_STORE)

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/status", api_status, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=[Middleware(Gate, token=token)],
    )


def _json(data: Any, *, status_code: int = 200) -> Response:  # noqa: ANN401 - any JSON value
    # ASCII escapes keep undecodable bytes (surrogate escapes in a URI) valid JSON.
    body = json.dumps(_finite(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status_code, media_type="application/json", headers=_NO_STORE)


def _finite(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    """`value` with NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Gate:
    """ASGI middleware: the token check, or the loopback ``Host`` check without a token."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self._app = app
        self._token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        if self._token is None:
            if is_loopback_host(host_name(headers.get("host", ""))):
                return None
            return PlainTextResponse(
                "this dashboard answers only to a loopback host name\n", status_code=421
            )
        if any(hmac.compare_digest(offered, self._token) for offered in _offered(scope, headers)):
            return None
        return PlainTextResponse(
            "a token is needed: Authorization: Bearer <token>, or ?token=<token>\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="nixdist"'},
        )


def _offered(scope: Scope, headers: Headers) -> list[bytes]:
    offered: list[bytes] = []
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        offered.append(credentials.strip().encode())
    query = scope.get("query_string", b"").decode("latin-1")
    offered.extend(value.encode() for value in parse_qs(query).get("token", []))
    return offered


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header, lower case, without the port (``[::1]`` kept whole)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host
