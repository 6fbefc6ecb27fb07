"""Where the dashboard listens, and the uvicorn server around the app.

``--listen HOST:PORT``: HOST is an IPv4 address, an IPv6 address in brackets (``[::1]:8421``)
or a name; PORT is 0 to 65535, 0 meaning "any free port". The socket is bound here, before
uvicorn starts, so the caller knows the real port at once (and can print it) and a bind error
is one clear message instead of a server log.

Loopback (``127.0.0.0/8``, ``::1``, ``localhost``) is the only place the dashboard may listen
without a token: anything else can be reached by other hosts (`ListenAddress.is_loopback`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import uvicorn

from nixdist.errors import ConfigError

if TYPE_CHECKING:
    from starlette.types import ASGIApp

DEFAULT_PORT: Final = 8421
DEFAULT_LISTEN: Final = f"127.0.0.1:{DEFAULT_PORT}"
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_GRACEFUL_SHUTDOWN_S: Final = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """A parsed ``HOST:PORT``; `host` is without brackets."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """``127.0.0.1:8421``, ``[::1]:8421``, ``dash.example:80``; raises `ConfigError`."""
        host, sep, port_text = text.strip().rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{text!r} is not HOST:PORT", file="--listen")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if not _is_ipv6(host):
                raise ConfigError(f"{host!r} in brackets is not an IPv6 address", file="--listen")
        elif ":" in host:
            raise ConfigError(
                f"{text!r}: write an IPv6 address in brackets, as [{host}]:{port_text}",
                file="--listen",
            )
        if not port_text.isdigit() or not 0 <= int(port_text) <= 0xFFFF:  # noqa: PLR2004
            raise ConfigError(
                f"port {port_text!r} is not a number from 0 to 65535", file="--listen"
            )
        if not host.strip() or any(c.isspace() for c in host):
            raise ConfigError(f"{host!r} is not a host name or address", file="--listen")
        return cls(host=host, port=int(port_text))

    @property
    def is_loopback(self) -> bool:
        """True when only this host can connect (a loopback address or ``localhost``)."""
        return is_loopback_host(self.host)

    def render(self, port: int | None = None) -> str:
        """``host:port`` as a URL authority (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if port is None else port}"


def is_loopback_host(host: str) -> bool:
    """``localhost``, an address in 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def bind(address: ListenAddress) -> socket.socket:
    """A listening TCP socket on `address`; raises `ConfigError` naming it when that fails."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(
            f"cannot listen on {address.render()}: {reason}", file="--listen"
        ) from err
    return sock


def bound_port(sock: socket.socket) -> int:
    """The port `sock` is bound to (the real one when 0 was asked for)."""
    port = sock.getsockname()[1]
    assert isinstance(port, int)  # noqa: S101 - AF_INET and AF_INET6 addresses end in a port
    return port


def make_server(app: ASGIApp) -> uvicorn.Server:
    """A uvicorn server for `app` that leaves logging to the caller (no access log)."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


def serve_forever(app: ASGIApp, sock: socket.socket) -> None:
    """Serve `app` on the bound socket until SIGINT or SIGTERM."""
    make_server(app).run(sockets=[sock])
