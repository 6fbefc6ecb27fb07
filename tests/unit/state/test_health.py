from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from nixdist.state.advisory import Advisory
from nixdist.state.db import StateDB
from nixdist.state.health import BACKOFF_BASE_S, BACKOFF_MAX_S, Health, backoff

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(1, BACKOFF_BASE_S), (2, 2 * BACKOFF_BASE_S), (3, 4 * BACKOFF_BASE_S), (60, BACKOFF_MAX_S)],
)
def test_backoff_doubles_up_to_a_cap(failures: int, seconds: float) -> None:
    assert backoff(failures) == seconds


def test_a_failure_is_remembered_until_the_pause_ends(tmp_path: Path) -> None:
    with StateDB.open(tmp_path) as db, StateDB.open(tmp_path) as other:
        health = Health(Advisory(db))
        assert health.down("ssh://b1", now=1000) is None
        record = health.failed("ssh://b1", "connection refused", now=1000)
        assert record.until == 1000 + BACKOFF_BASE_S
        # Another process (a new Health on the same directory) sees it.
        seen = Health(Advisory(other)).down("ssh://b1", now=1001)
        assert seen == record
        assert seen.describe(1001) == f"connection refused (retrying in {BACKOFF_BASE_S - 1:g} s)"
        assert Health(Advisory(other)).down("ssh://b1", now=1000 + BACKOFF_BASE_S) is None
        assert health.down("ssh://b2", now=1001) is None


def test_consecutive_failures_lengthen_the_pause_and_an_answer_clears_it(tmp_path: Path) -> None:
    with StateDB.open(tmp_path) as db:
        health = Health(Advisory(db))
        health.failed("ssh://b1", "refused", now=0)
        second = health.failed("ssh://b1", "timed out", now=40)
        assert (second.failures, second.since, second.until) == (2, 0, 40 + 2 * BACKOFF_BASE_S)
        assert "2 times" in second.describe(40)
        health.answered("ssh://b1")
        assert health.down("ssh://b1", now=41) is None
        assert health.failed("ssh://b1", "refused", now=50).failures == 1


def test_a_database_that_fails_means_up(tmp_path: Path) -> None:
    db = StateDB.open(tmp_path)
    health = Health(Advisory(db))
    health.failed("ssh://b1", "refused", now=0)
    db.close()  # every later query raises StateError
    assert health.down("ssh://b1", now=1) is None
    assert health.failed("ssh://b1", "refused", now=2).failures == 1
    health.answered("ssh://b1")


def test_without_a_database_nothing_breaks() -> None:
    health = Health(Advisory(None))
    assert health.failed("ssh://b1", "refused", now=0).failures == 1
    assert health.down("ssh://b1", now=1) is None
    health.answered("ssh://b1")
