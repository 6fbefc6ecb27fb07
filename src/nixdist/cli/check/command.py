"""`nixdist check [--machines FILE] [--timeout SECONDS] [--json]`: is remote building set up?

Checks this host (``build-hook``, ``builders``, the ``current-load`` directory, trust) and every
builder of the machines file — by default the machines Nix itself would use
(``$NIX_REMOTE_SYSTEMS``, else the ``builders`` setting, default ``@/etc/nix/machines``).
Builders are reached the way the hook reaches them, so ``NIX_SSHOPTS`` applies. What is checked
and how: `nixdist.cli.check.verdicts`.

Output: this host's findings, a table with one row per builder, then every warning and
failure in words with what to do about it. ``--json`` prints `report_to_json` instead.

Exit status: 0 when nothing failed (warnings alone keep 0), 1 when a builder is unusable or
this host cannot distribute builds, and 1 with a one-line error when the machines cannot be
read.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Final

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from nixdist.cli.check.observe import (
    DEFAULT_TIMEOUT_S,
    run_check,
)
from nixdist.cli.check.verdicts import (
    Status,
    render_bytes,
    report_to_json,
    verdict,
)

if TYPE_CHECKING:
    from nixdist.cli.check.verdicts import BuilderReport, CheckReport, Finding

_UNLIMITED_WIDTH: Final = 1_000_000
_STYLE: Final = {Status.OK: "green", Status.SKIP: "dim", Status.WARN: "yellow", Status.FAIL: "red"}


def _text(text: str, style: str = "") -> Text:
    """Plain text (no markup), undecodable bytes shown as U+FFFD."""
    return Text(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), style=style)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _builder_table(builders: tuple[BuilderReport, ...]) -> Table:
    table = Table()
    # protocol: the serve protocol's version (2.x, ssh://) or the daemon's (1.x, ssh-ng://)
    for name in ("builder", "status", "connect", "handshake", "nix", "protocol", "systems", "free"):
        numeric = name in {"connect", "handshake", "free"}
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "systems")
    for b in builders:
        systems = " ".join([b.system, *b.extra_platforms]) if b.system else "-"
        free = "-" if b.store_free_bytes is None else render_bytes(b.store_free_bytes)
        table.add_row(
            _text(b.host),
            _text(verdict(b), _STYLE[b.status]),
            _ms(b.connect_ms),
            _ms(b.handshake_ms),
            _text(b.nix_version or "-"),
            _text(b.serve_protocol or "-"),
            _text(systems),
            free,
        )
    return table


def _finding_lines(findings: tuple[Finding, ...], *, label: str, all_: bool) -> list[Text]:
    """One line per finding (`all_`) or per warning and failure, with its hint below."""
    lines = []
    for f in findings:
        if not all_ and f.status in {Status.OK, Status.SKIP}:
            continue
        line = Text("  ")
        line.append(f"{f.status:<4}", style=_STYLE[f.status])
        line.append(f"  {label}{f.check}: ")
        line.append_text(_text(f.message))
        lines.append(line)
        if f.hint and f.status in {Status.WARN, Status.FAIL}:
            lines.append(_text(f"        → {f.hint}", "dim"))
    return lines


def render_report(console: Console, report: CheckReport) -> None:
    """The human-readable report: this host, the builders' table, then their problems."""
    console.print(_text("This host"), style="bold")
    for line in _finding_lines(report.local, label="", all_=True):
        console.print(line, soft_wrap=True)
    count = len(report.builders)
    title = f"{count} builder{'' if count == 1 else 's'} ({report.machines_origin})"
    console.print()
    console.print(_text(title), style="bold", soft_wrap=True)
    if not report.builders:
        return
    table = _builder_table(report.builders)
    if not console.is_terminal:  # a pipe or file: whole lines, for grep and diff
        unlimited = console.options.update_width(_UNLIMITED_WIDTH)
        console.width = max(console.width, Measurement.get(console, unlimited, table).maximum)
    console.print(table)
    problems = [
        (b, _finding_lines(b.findings, label="", all_=False))
        for b in report.builders
        if b.status is not Status.OK
    ]
    for b, lines in problems:
        console.print(_text(f"{b.host} ({b.source})"), style="bold", soft_wrap=True)
        for line in lines:
            console.print(line, soft_wrap=True)


@click.command()
@click.option(
    "--machines",
    "machines_file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Check the builders of this machines file [default: the machines Nix uses].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds each builder may take to connect and to answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def check(machines_file: str | None, timeout: float, as_json: bool) -> int:
    """Check that builds can be distributed: this host's setup and every builder."""
    report = run_check(os.environ, machines_file=machines_file, timeout=timeout)
    if as_json:
        text = json.dumps(report_to_json(report), ensure_ascii=False, indent=2)
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
        sys.stdout.buffer.flush()
    else:
        render_report(Console(highlight=False), report)
    return 0 if report.ok else 1
