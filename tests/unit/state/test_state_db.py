"""The state database's build queries, and `nixdist history`'s filters over them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from nixdist.cli.history import history
from nixdist.state.db import StateDB
from nixdist.state.rows import Outcome

if TYPE_CHECKING:
    from pathlib import Path

BUILDS = (
    ("ssh://b1", Outcome.BUILT, 100.0),
    ("ssh://b2", Outcome.FAILED, 200.0),
    ("ssh://b3", Outcome.BUILT, 300.0),
    ("ssh://b1", Outcome.LOST, 400.0),
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    with StateDB.open(tmp_path) as db:
        for i, (machine, status, started) in enumerate(BUILDS):
            build = db.start_build(
                drv_path=f"/nix/store/{i:032d}-d{i}.drv", machine=machine, attempt=1, now=started
            )
            db.update_build(build, status=status, finished=started + 1.0)
    return tmp_path


def test_builds_filter_by_one_machine_a_set_of_machines_status_and_time(state: Path) -> None:
    with StateDB.open(state) as db:
        assert [b.machine for b in db.builds()] == ["ssh://b1", "ssh://b3", "ssh://b2", "ssh://b1"]
        assert [b.started for b in db.builds(machine="ssh://b1")] == [400.0, 100.0]
        both = db.builds(machines=["ssh://b2", "ssh://b3"])
        assert [b.machine for b in both] == ["ssh://b3", "ssh://b2"]
        assert db.builds(machines=[]) == []
        assert [b.started for b in db.builds(status=Outcome.BUILT)] == [300.0, 100.0]
        assert [b.started for b in db.builds(since=150.0, until=350.0)] == [300.0, 200.0]
        assert [b.started for b in db.builds(limit=1)] == [400.0]


def test_history_machines_option_keeps_the_builds_of_that_file(
    state: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIXDIST_STATE_DIR", str(state))
    machines = tmp_path_factory.mktemp("conf") / "machines"
    machines.write_text("ssh://b1 x86_64-linux\nssh://b3 x86_64-linux\n")
    result = CliRunner().invoke(history, ["--machines", str(machines), "--json"])
    assert result.exit_code == 0, result.output
    assert [b["machine"] for b in json.loads(result.output)] == [
        "ssh://b1",
        "ssh://b3",
        "ssh://b1",
    ]
    everything = CliRunner().invoke(history, ["--json"])
    assert len(json.loads(everything.output)) == len(BUILDS)


def test_a_report_of_unknowns_is_kept_and_an_old_probe_cache_is_replaced(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415 - only this test writes an old database by hand

    from nixdist.state.rows import ProbeRow  # noqa: PLC0415
    from nixdist.transport.probe import BuilderReport  # noqa: PLC0415

    # A schema-1 database: probe values NOT NULL, one cached report.
    old = sqlite3.connect(tmp_path / "nixdist.db")
    old.executescript(
        "CREATE TABLE probes (uri TEXT PRIMARY KEY, time REAL NOT NULL, local_slots INTEGER NOT"
        " NULL, running_builds INTEGER NOT NULL, load1 REAL NOT NULL, cores INTEGER NOT NULL,"
        " disk_free INTEGER NOT NULL, disk_total INTEGER NOT NULL, mem_available INTEGER NOT"
        " NULL); INSERT INTO probes VALUES ('ssh://a', 1, 0, 0, 0.5, 2, 10, 20, 30);"
        " PRAGMA user_version = 1;"
    )
    old.close()
    with StateDB.open(tmp_path) as db:
        assert db.all_probes() == []  # a cache: made anew
        unknown = BuilderReport(os="Darwin", cores=8, problem="it did not tell its load")
        db.put_probe(ProbeRow(uri="ssh://mac", time=2.0, local_slots=1, report=unknown))
        [row] = db.all_probes()
    assert row.report == unknown
    assert row.other_builds == 0  # not told: only this machine's slots count
    assert row.remote_load().load_per_core is None
