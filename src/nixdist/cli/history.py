"""`nixdist history`: every remote build attempt, newest first, and the history's retention.

Filtered by ``--machine`` (or ``--machines FILE``), ``--status``, ``--since``/``--until``
(``30m``, ``2h``, ``1d`` ago, or a Unix time), ``--drv``; ``--limit``; ``--json``.
``--decisions`` shows the hook's answers to Nix instead (accept, postpone, decline, with the
reasons), filtered by ``--since``, ``--drv`` and ``--limit``.
``--prune`` forgets now what the hook would forget at its next daily pruning: decisions and
finished attempts older than the ``history-days`` setting.
"""

from __future__ import annotations

import dataclasses
import os
import time

import click

from nixdist.cli.machines import effective_machines
from nixdist.cli.status import (
    builds_table,
    console,
    decisions_table,
    emit_json,
    open_db,
    parse_when,
)
from nixdist.settings import load_settings
from nixdist.state.report import build_json
from nixdist.state.rows import BuildRow, DecisionRow, Outcome


def _prune(now: float) -> None:
    days = load_settings().history_days
    if days <= 0:
        click.echo("history-days is 0: the history is kept forever")
        return
    db = open_db()
    if db is None:
        click.echo("no history yet")
        return
    with db:
        decisions, builds = db.prune(now - days * 86400)
    click.echo(f"forgot {decisions} decisions and {builds} builds older than {days:g} days")


def _decisions(
    *, since: str | None, drv: str | None, limit: int, as_json: bool, now: float
) -> None:
    db = open_db()
    decisions: list[DecisionRow] = []
    if db is not None:
        with db:
            decisions = db.decisions(
                since=0.0 if since is None else parse_when(since, now), drv_path=drv, limit=limit
            )
    if as_json:
        emit_json([dataclasses.asdict(d) for d in decisions])
        return
    console().print(decisions_table(f"{len(decisions)} decisions", decisions))


@click.command()
@click.option("--machine", help="Only builds on this machine (its store URI).")
@click.option(
    "--machines",
    "machines_file",
    metavar="FILE",
    help="Only builds on the machines of this machines file (default: on any machine).",
)
@click.option(
    "--status",
    "status_",
    type=click.Choice([s.value for s in Outcome]),
    help="Only builds with this status.",
)
@click.option("--since", help="Only builds started since (30m, 2h, 1d ago, or a Unix time).")
@click.option("--until", help="Only builds started until (same forms).")
@click.option("--drv", help="Only attempts of this derivation (store path).")
@click.option("--limit", default=50, show_default=True, help="At most this many builds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--decisions",
    "show_decisions",
    is_flag=True,
    help="Show the hook's answers to Nix (accept, postpone, decline) and their reasons.",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Forget decisions and finished builds older than the history-days setting, now.",
)
def history(  # noqa: PLR0917 - click passes one argument per option
    machine: str | None,
    machines_file: str | None,
    status_: str | None,
    since: str | None,
    until: str | None,
    drv: str | None,
    limit: int,
    as_json: bool,
    show_decisions: bool,
    prune: bool,
) -> None:
    """Remote builds, newest first."""
    now = time.time()
    if prune:
        _prune(now)
        return
    if show_decisions:
        _decisions(since=since, drv=drv, limit=limit, as_json=as_json, now=now)
        return
    db = open_db()
    builds: list[BuildRow] = []
    if db is not None:
        try:
            builds = db.builds(
                machine=machine,
                machines=(
                    None
                    if machines_file is None
                    else [m.uri for m in effective_machines(os.environ, machines_file)[0]]
                ),
                status=status_,
                since=0.0 if since is None else parse_when(since, now),
                until=None if until is None else parse_when(until, now),
                drv_path=drv,
                limit=limit,
            )
        finally:
            db.close()
    if as_json:
        emit_json([build_json(b, now) for b in builds])
        return
    console().print(builds_table(f"{len(builds)} builds", builds, now))
