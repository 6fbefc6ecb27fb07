"""History retention: what is older than the history-days setting is forgotten, once a day."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.state.advisory import Advisory
from nixdist.state.db import StateDB
from nixdist.state.history import DAY_S, History
from nixdist.state.paths import pruned_marker
from nixdist.state.rows import Outcome

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_800_000_000.0


def _fill(db: StateDB) -> None:
    for age_days, drv in ((40, "old"), (10, "new")):
        when = NOW - age_days * DAY_S
        db.record_decision(
            drv_path=drv,
            system="x",
            features=(),
            decision="accept",
            machine="m",
            reasons=(),
            now=when,
        )
        finished = db.start_build(drv_path=drv, machine="m", attempt=1, now=when)
        db.update_build(finished, status=Outcome.BUILT, finished=when + 1)
    db.start_build(drv_path="old-running", machine="m", attempt=1, now=NOW - 40 * DAY_S)


def test_old_decisions_and_finished_builds_are_forgotten(tmp_path: Path) -> None:
    with StateDB.open(tmp_path) as db:
        _fill(db)
        History(Advisory(db, print)).prune_if_due(keep_days=30, now=NOW)
        assert [d.drv_path for d in db.decisions()] == ["new"]
        assert sorted(b.drv_path for b in db.builds()) == ["new", "old-running"]


def test_pruning_happens_at_most_once_a_day(tmp_path: Path) -> None:
    with StateDB.open(tmp_path) as db:
        History(Advisory(db, print)).prune_if_due(keep_days=30, now=NOW)
        assert pruned_marker(tmp_path).stat().st_mtime == NOW
        _fill(db)
        History(Advisory(db, print)).prune_if_due(keep_days=30, now=NOW + DAY_S / 2)
        assert len(db.decisions()) == 2  # pruned half a day ago: not again yet
        History(Advisory(db, print)).prune_if_due(keep_days=30, now=NOW + DAY_S)
        assert len(db.decisions()) == 1


def test_zero_days_keeps_everything(tmp_path: Path) -> None:
    with StateDB.open(tmp_path) as db:
        _fill(db)
        History(Advisory(db, print)).prune_if_due(keep_days=0, now=NOW)
        assert len(db.decisions()) == 2
        assert not pruned_marker(tmp_path).exists()
