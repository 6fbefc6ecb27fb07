"""`nixdist dashboard` (also `nixdist serve`, its first name): the dashboard, ``/api/status``
and ``/metrics`` over HTTP.

``nixdist dashboard [--machines FILE] [--listen HOST:PORT] [--token TOKEN]`` serves
`nixdist.web` on ``127.0.0.1:8421`` by default and prints its address. It reads what
``nixdist status`` reads — the machines file (default: what Nix reads), this user's state
database and Nix's slot locks — afresh at every request, so it may run for days.

Listening anywhere but on loopback needs a token (``--token`` or
``NIXDIST_DASHBOARD_TOKEN``; prefer the variable: arguments are visible in ``ps``); every
request must then carry ``Authorization: Bearer <token>`` or ``?token=<token>``, and the
printed address includes it. Stop with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import quote

import click

from nixdist.cli.machines import effective_machines
from nixdist.cli.status import open_db
from nixdist.errors import ConfigError
from nixdist.settings import load_settings
from nixdist.state.slots import SlotDirectory
from nixdist.web import ListenAddress, Sources, bind, bound_port, create_app, serve_forever
from nixdist.web.server import DEFAULT_LISTEN

TOKEN_ENV = "NIXDIST_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """`nixdist serve`'s options, checked."""

    machines_file: str | None
    listen: ListenAddress
    token: str | None
    recent: int

    @classmethod
    def parse(
        cls, *, machines_file: str | None, listen: str, token: str | None, recent: int
    ) -> ServeOptions:
        address = ListenAddress.parse(listen)
        token = token or None
        if token is not None and not token.isprintable():
            raise ConfigError("the token must be printable text", file="--token")
        if token is None and not address.is_loopback:
            raise ConfigError(
                f"{address.host} is not a loopback address: listening there needs a token "
                f"(--token or {TOKEN_ENV})",
                file="--listen",
            )
        if recent < 0:
            raise ConfigError(f"{recent} is negative", file="--recent")
        return cls(machines_file=machines_file, listen=address, token=token, recent=recent)


@click.command()
@click.option("--machines", "machines_file", metavar="FILE", help="Machines file (default: Nix's).")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (IPv6 in brackets; port 0 picks a free one).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    help="Require this bearer token (needed off loopback).",
)
@click.option("--recent", default=50, show_default=True, help="Finished builds on the page.")
def dashboard(machines_file: str | None, listen: str, token: str | None, recent: int) -> None:
    """Serve the dashboard, /api/status and /metrics."""
    token = token or load_settings().dashboard_token
    opts = ServeOptions.parse(
        machines_file=machines_file, listen=listen, token=token, recent=recent
    )
    env = dict(os.environ)
    effective_machines(env, opts.machines_file)  # a broken machines file fails here, at once
    sources = Sources(
        machines=lambda: effective_machines(env, opts.machines_file)[0],
        open_db=open_db,
        slots=SlotDirectory.default(environ=env),
        recent=opts.recent,
    )
    app = create_app(sources, token=opts.token)
    sock = bind(opts.listen)
    with sock:
        query = "" if opts.token is None else "?token=" + quote(opts.token, safe="")
        click.echo(f"nixdist dashboard on http://{opts.listen.render(bound_port(sock))}/{query}")
        logging.basicConfig(level=logging.WARNING, format="nixdist dashboard: %(message)s")
        serve_forever(app, sock)
