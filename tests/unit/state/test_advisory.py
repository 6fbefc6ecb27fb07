"""The state database as advice: a failure is said once, then the database is left alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.errors import StateError
from nixdist.state.advisory import Advisory
from nixdist.state.db import StateDB, open_state_db

if TYPE_CHECKING:
    from pathlib import Path


def test_a_failing_action_gives_the_default_and_one_message(tmp_path: Path) -> None:
    said: list[str] = []
    advice = Advisory(StateDB.open(tmp_path), said.append)
    assert advice(lambda db: db.all_health(), None) == []

    def broken(db: StateDB) -> int:
        raise StateError(f"{db.path}: disk I/O error")

    assert advice(broken, 7) == 7
    assert advice(lambda db: db.all_health(), None) is None  # not used any more
    assert not advice.available
    assert len(said) == 1
    assert "disk I/O error" in said[0]


def test_a_state_directory_that_cannot_be_made_is_said_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    said: list[str] = []
    advice = Advisory.open(tmp_path / "file" / "state", said.append)
    assert not advice.available
    assert advice.root is None
    assert advice(lambda db: len(db.all_health()), -1) == -1
    assert len(said) == 1
    assert "running without history" in said[0]


def test_the_commands_see_no_database_until_one_is_made(tmp_path: Path) -> None:
    assert open_state_db(tmp_path, create=False) is None
    db = open_state_db(tmp_path)
    assert db is not None
    db.close()
    again = open_state_db(tmp_path, create=False)
    assert again is not None
    again.close()
