"""``nixdist dashboard``: the dashboard page, ``/api/status`` and ``/metrics`` (design.md §2).

A thin shell over `nixdist.state.report`: every request reads the machines file, the state
database and the slot locks afresh (`nixdist.web.sources`), and renders what it read — the
page (`nixdist.web.page`) as HTML polling JSON, ``/api/status`` as
`StatusReport.to_json`, ``/metrics`` through a Prometheus collector (`nixdist.web.metrics`).
The app and its token gate are in `nixdist.web.app`; where it listens, and the uvicorn server,
in `nixdist.web.server`.
"""

from __future__ import annotations

from nixdist.web.app import create_app
from nixdist.web.server import ListenAddress, bind, bound_port, serve_forever
from nixdist.web.sources import Sources

__all__ = ["ListenAddress", "Sources", "bind", "bound_port", "create_app", "serve_forever"]
