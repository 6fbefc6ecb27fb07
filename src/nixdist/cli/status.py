"""`nixdist status`: what runs where, and how the last builds went (`nixdist.cli.history`:
every build attempt).

It reads the state database (``<state dir>/nixdist.db``) that every hook process writes, and
Nix's slot locks; it does not connect to a builder (``nixdist check`` does). The tables and
time words here are `nixdist history`'s too.

``status``: one row per machine of the machines file (``--machines FILE``, default: what Nix
reads) — slots in use, up or down (with the reason and when it is retried), the builder's last
load report and its age — then the running builds with their phase, then the last builds.
``--json`` for the same as data.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nixdist.cli.machines import effective_machines
from nixdist.scheduler.policy import format_bytes
from nixdist.state.db import StateDB, open_state_db
from nixdist.state.paths import state_dir
from nixdist.state.report import status_report
from nixdist.state.rows import Outcome
from nixdist.state.slots import SlotDirectory

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.state.report import StatusReport
    from nixdist.state.rows import BuildRow, DecisionRow

_AGO: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def open_db() -> StateDB | None:
    """The state database of this user's settings, or None when there is none yet."""
    return open_state_db(state_dir(os.environ), create=False)


def parse_when(text: str, now: float) -> float:
    """``30m`` (ago), ``2h``, ``1d``, or a Unix time."""
    if match := _AGO.fullmatch(text.strip()):
        return now - float(match[1]) * _UNIT_S[match[2]]
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not like 30m, 2h, 1d or a Unix time") from None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _bytes(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def console() -> Console:
    """A console for tables; in a pipe, wide enough that rows are not folded."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 200)
    return out


def emit_json(data: Any) -> None:  # noqa: ANN401 - any JSON value
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def machines_table(report: StatusReport) -> Table:
    table = Table(title="machines", title_justify="left")
    for name in ("machine", "slots", "state", "builds there", "load/core", "disk free", "probed"):
        table.add_column(name, justify="left" if name in {"machine", "state"} else "right")
    for m in report.machines:
        probe = m.probe
        r = None if probe is None else probe.report
        if m.down is not None:
            state = Text(f"down: {m.down.describe(report.time)}", style="red")
        elif r is not None and r.problem is not None:
            state = Text(f"up (load report: {r.problem})", style="yellow")
        else:
            state = Text("up", style="green")
        table.add_row(
            Text(m.machine.uri),
            f"{m.slots_in_use}/{m.machine.max_jobs}",
            state,
            _unknown(None if r is None else r.running_builds, str),
            _unknown(None if r is None else r.load_per_core, lambda v: f"{v:.2f}"),
            _unknown(None if r is None else r.disk_free, format_bytes),
            "-" if probe is None else f"{report.time - probe.time:.0f}s ago",
        )
    return table


_V = TypeVar("_V", int, float)


def _unknown(value: _V | None, show: Callable[[_V], str]) -> str:
    """`value` shown, or ``-`` when the builder did not tell it."""
    return "-" if value is None else show(value)


def decisions_table(title: str, decisions: list[DecisionRow]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("time", "derivation", "system", "answer", "machine", "reasons"):
        table.add_column(name)
    for d in decisions:
        style = {"accept": "green", "postpone": "yellow"}.get(d.decision, "red")
        table.add_row(
            _clock(d.time),
            Text(_name(d.drv_path)),
            Text(d.system),
            Text(d.decision, style=style),
            Text(d.machine or ""),
            Text("\n".join(d.reasons)),
        )
    return table


def builds_table(title: str, builds: tuple[BuildRow, ...] | list[BuildRow], now: float) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("started", "derivation", "machine", "try", "status", "phase/error"):
        table.add_column(name)
    for name in ("upload", "build", "download", "total"):
        table.add_column(name, justify="right")
    for b in builds:
        status = b.effective_status
        style = {"built": "green", "running": "cyan"}.get(status, "red")
        detail = b.phase if status == Outcome.RUNNING else (b.error or "")
        total = b.duration_s if b.finished is not None else now - b.started
        table.add_row(
            _clock(b.started),
            Text(_name(b.drv_path)),
            Text(b.machine),
            str(b.attempt),
            Text(status, style=style),
            Text(detail.splitlines()[0][:80] if detail else ""),
            f"{_seconds(b.upload_s)} {_bytes(b.upload_bytes)}",
            _seconds(b.build_s),
            f"{_seconds(b.download_s)} {_bytes(b.download_bytes)}",
            _seconds(total),
        )
    return table


@click.command()
@click.option("--machines", "machines_file", metavar="FILE", help="Machines file (default: Nix's).")
@click.option("--recent", default=10, show_default=True, help="How many finished builds to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(machines_file: str | None, recent: int, as_json: bool) -> None:
    """Machines, running builds and the last builds."""
    found, _ = effective_machines(os.environ, machines_file)
    db = open_db()
    try:
        report = status_report(found, db, SlotDirectory.default(environ=os.environ), recent=recent)
    finally:
        if db is not None:
            db.close()
    if as_json:
        emit_json(report.to_json())
        return
    out = console()
    out.print(machines_table(report))
    out.print(builds_table("running builds", report.running, report.time))
    out.print(builds_table("recent builds", report.recent, report.time))
