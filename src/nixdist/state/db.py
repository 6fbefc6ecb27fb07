"""``<state dir>/nixdist.db``: history, machine health and the probe cache (design.md §5).

One SQLite database in WAL mode, written by every hook process of the machine and read by
``nixdist status``, ``history``, ``explain`` and the dashboard. WAL lets readers run while a
hook writes; each write is one short autocommit statement, and ``busy_timeout`` makes
concurrent writers wait for each other instead of failing. ``synchronous=NORMAL``: a power
cut may lose the last few records, never corrupt the file — history is advice, and nothing
here decides whether a build is correct.

Tables (``PRAGMA user_version`` = `SCHEMA_VERSION`)::

    health     one row per builder that failed to connect: failures, since, until, reason
    probes     one row per builder: its last self-report (running builds, load, disk, memory;
               NULL for what it did not tell, with the problem in words)
    decisions  every answer to Nix's ``try``: accept / decline / postpone, with the reasons
    builds     every remote build attempt: machine, phase, status, phase durations and bytes

A build attempt is written when it starts (``status = 'running'``), its ``phase`` is updated as
it goes (connect, upload, build, download) and it is finished with a status. An attempt still
``running`` whose hook process is gone was interrupted (Nix killed the hook, or the machine
rebooted): readers report it as such (`BuildRow.effective_status`).

Errors from SQLite are turned into `StateError`; callers on the hook's path treat the history
as advice and go on without it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

from nixdist.errors import StateError, TransportError
from nixdist.state.paths import db_path
from nixdist.state.rows import (
    BuildRow,
    BuildTotals,
    DecisionRow,
    Down,
    Outcome,
    Phase,
    ProbeRow,
)
from nixdist.transport.fs import private_dir
from nixdist.transport.probe import BuilderReport

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

#: 2: probes' values may be NULL (a builder that does not tell), with os and problem.
SCHEMA_VERSION: Final = 2
#: Tables that are caches: dropped and made anew when the schema changes.
_CACHE_TABLES: Final = ("probes",)
BUSY_TIMEOUT_MS: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS health (
    uri TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    since REAL NOT NULL,
    until REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (
    uri TEXT PRIMARY KEY,
    time REAL NOT NULL,
    local_slots INTEGER NOT NULL,
    running_builds INTEGER,
    load1 REAL,
    cores INTEGER,
    disk_free INTEGER,
    disk_total INTEGER,
    mem_available INTEGER,
    os TEXT,
    problem TEXT
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    pid INTEGER NOT NULL,
    drv_path TEXT NOT NULL,
    system TEXT NOT NULL,
    features TEXT NOT NULL,
    decision TEXT NOT NULL,
    machine TEXT,
    reasons TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    drv_path TEXT NOT NULL,
    machine TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    upload_s REAL,
    upload_bytes INTEGER,
    upload_paths INTEGER,
    build_s REAL,
    download_s REAL,
    download_bytes INTEGER,
    download_paths INTEGER
);
CREATE INDEX IF NOT EXISTS builds_started ON builds (started);
CREATE INDEX IF NOT EXISTS builds_status ON builds (status);
"""


def _prepare(connection: sqlite3.Connection) -> None:
    """Settings of every connection; the schema made or brought up to date."""
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode = WAL")
        drops = "".join(f"DROP TABLE IF EXISTS {t};" for t in _CACHE_TABLES)
        connection.executescript(
            f"BEGIN; {drops}{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
    connection.execute("PRAGMA synchronous = NORMAL")


@dataclass(frozen=True, slots=True)
class _Done:
    """A statement's rows, read at once (a cursor would be read outside the lock)."""

    rows: list[Any]
    rowcount: int
    lastrowid: int | None

    def fetchone(self) -> Any:  # noqa: ANN401 - a row of any shape
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


class StateDB:
    """The open state database. Use `StateDB.open`; close it (or use ``with``) when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        # nixdist build writes the history from its build threads; a statement (and the
        # reading of its rows) is one thread's at a time.
        self._lock = threading.RLock()

    @classmethod
    def open(cls, state_dir: Path) -> Self:
        """Open (creating if needed) ``<state_dir>/nixdist.db``; the directory is made 0700."""
        path = db_path(state_dir)
        try:
            private_dir(state_dir)
            old_umask = os.umask(0o077)
            try:
                connection = sqlite3.connect(
                    path,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,  # used by one thread at a time: `_lock`
                )
            finally:
                os.umask(old_umask)
        except (OSError, sqlite3.Error, TransportError) as err:
            raise StateError(f"{path}: {err}") from err
        try:
            _prepare(connection)
        except sqlite3.Error as err:
            connection.close()
            raise StateError(f"{path}: {err}") from err
        return cls(connection, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: Sequence[object] = ()) -> _Done:
        """Run one statement and read all its rows, under the lock."""
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                return _Done(cursor.fetchall(), cursor.rowcount, cursor.lastrowid)
            except sqlite3.Error as err:
                raise StateError(f"{self.path}: {err}") from err

    def prune(self, before: float) -> tuple[int, int]:
        """Forget decisions made and attempts started before `before` (a Unix time), except
        attempts still running; how many of each were deleted."""
        with self._lock, self._db:
            decisions = self._execute("DELETE FROM decisions WHERE time < ?", (before,)).rowcount
            builds = self._execute(
                "DELETE FROM builds WHERE started < ? AND status != ?", (before, Outcome.RUNNING)
            ).rowcount
        return decisions, builds

    # -- health -------------------------------------------------------------------------------

    def health(self, uri: str) -> Down | None:
        row = self._execute(
            "SELECT uri, reason, failures, since, until FROM health WHERE uri = ?", (uri,)
        ).fetchone()
        return None if row is None else _down(row)

    def all_health(self) -> list[Down]:
        rows = self._execute("SELECT uri, reason, failures, since, until FROM health ORDER BY uri")
        return [_down(row) for row in rows]

    def put_health(self, record: Down) -> None:
        self._execute(
            "INSERT OR REPLACE INTO health (uri, reason, failures, since, until) "
            "VALUES (?, ?, ?, ?, ?)",
            (record.uri, record.reason, record.failures, record.since, record.until),
        )

    def clear_health(self, uri: str) -> None:
        self._execute("DELETE FROM health WHERE uri = ?", (uri,))

    # -- probes -------------------------------------------------------------------------------

    def probe(self, uri: str) -> ProbeRow | None:
        row = self._execute(_SELECT_PROBES + " WHERE uri = ?", (uri,)).fetchone()
        return None if row is None else _probe(row)

    def all_probes(self) -> list[ProbeRow]:
        return [_probe(row) for row in self._execute(_SELECT_PROBES + " ORDER BY uri")]

    def put_probe(self, probe: ProbeRow) -> None:
        report = probe.report
        self._execute(
            "INSERT OR REPLACE INTO probes (uri, time, local_slots, running_builds, load1, cores,"
            " disk_free, disk_total, mem_available, os, problem)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                probe.uri,
                probe.time,
                probe.local_slots,
                report.running_builds,
                report.load1,
                report.cores,
                report.disk_free,
                report.disk_total,
                report.mem_available,
                report.os,
                report.problem,
            ),
        )

    # -- decisions ----------------------------------------------------------------------------

    def record_decision(
        self,
        *,
        drv_path: str,
        system: str,
        features: Sequence[str],
        decision: str,
        machine: str | None,
        reasons: Sequence[str],
        now: float | None = None,
    ) -> None:
        self._execute(
            "INSERT INTO decisions (time, pid, drv_path, system, features, decision, machine,"
            " reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time() if now is None else now,
                os.getpid(),
                drv_path,
                system,
                json.dumps(sorted(features)),
                decision,
                machine,
                json.dumps(list(reasons)),
            ),
        )

    def decisions(
        self, *, since: float = 0.0, drv_path: str | None = None, limit: int = 1000
    ) -> list[DecisionRow]:
        """The newest decisions made since `since` (about `drv_path` only, if given)."""
        rows = self._execute(
            "SELECT id, time, pid, drv_path, system, features, decision, machine, reasons "
            "FROM decisions WHERE time >= ? AND (? IS NULL OR drv_path = ?) "
            "ORDER BY id DESC LIMIT ?",
            (since, drv_path, drv_path, limit),
        )
        return [
            DecisionRow(
                id=row[0],
                time=row[1],
                pid=row[2],
                drv_path=row[3],
                system=row[4],
                features=tuple(json.loads(row[5])),
                decision=row[6],
                machine=row[7],
                reasons=tuple(json.loads(row[8])),
            )
            for row in rows
        ]

    # -- builds -------------------------------------------------------------------------------

    def start_build(
        self, *, drv_path: str, machine: str, attempt: int, now: float | None = None
    ) -> int:
        """Record a new attempt (``running``, phase connect); returns its id."""
        cursor = self._execute(
            "INSERT INTO builds (drv_path, machine, attempt, pid, started, phase, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                drv_path,
                machine,
                attempt,
                os.getpid(),
                time.time() if now is None else now,
                Phase.CONNECT,
                Outcome.RUNNING,
            ),
        )
        assert cursor.lastrowid is not None  # noqa: S101 - an INSERT always sets it
        return cursor.lastrowid

    def update_build(self, build_id: int, **columns: object) -> None:
        """Set some columns of attempt `build_id` (phase, timings, bytes, status, …)."""
        unknown = set(columns) - _BUILD_UPDATABLE
        if unknown:
            raise ValueError(f"not build columns: {sorted(unknown)}")
        names = sorted(columns)
        assignments = ", ".join(f"{name} = ?" for name in names)
        self._execute(
            f"UPDATE builds SET {assignments} WHERE id = ?",  # noqa: S608 - names checked above
            [*(columns[name] for name in names), build_id],
        )

    def builds(
        self,
        *,
        machine: str | None = None,
        machines: Sequence[str] | None = None,
        status: str | None = None,
        since: float = 0.0,
        until: float | None = None,
        drv_path: str | None = None,
        limit: int = 1000,
    ) -> list[BuildRow]:
        """Build attempts, newest first, filtered. `status` matches the effective status;
        `machines` keeps the attempts on any of these store URIs."""
        clauses = ["started >= ?"]
        params: list[object] = [since]
        if until is not None:
            clauses.append("started <= ?")
            params.append(until)
        if machine is not None:
            clauses.append("machine = ?")
            params.append(machine)
        if machines is not None:
            clauses.append(f"machine IN ({', '.join('?' * len(machines))})")
            params.extend(machines)
        if drv_path is not None:
            clauses.append("drv_path = ?")
            params.append(drv_path)
        if status is not None:
            # running and interrupted are both stored as running; the hook's pid tells them apart
            stored = Outcome.RUNNING if status == Outcome.INTERRUPTED else status
            clauses.append("status = ?")
            params.append(stored)
        rows = self._execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds WHERE {' AND '.join(clauses)} "  # noqa: S608
            "ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        found = [_build_row(row) for row in rows]
        if status is None:
            return found
        return [row for row in found if row.effective_status == status]

    def build_times(self, *, limit: int = 10000) -> list[tuple[str, str, float]]:
        """(drv path, machine, seconds building) of the newest `limit` builds that succeeded."""
        rows = self._execute(
            "SELECT drv_path, machine, build_s FROM builds"
            " WHERE status = ? AND build_s IS NOT NULL ORDER BY id DESC LIMIT ?",
            (Outcome.BUILT, limit),
        )
        return [(row[0], row[1], float(row[2])) for row in rows]

    def build_totals(self, duration_bounds: Sequence[float]) -> list[BuildTotals]:
        """Per machine and stored status, in one query: attempts, bytes, paths, phase times,
        and how many finished attempts took at most each of `duration_bounds` seconds."""
        buckets = "".join(", TOTAL(finished - started <= ?)" for _ in duration_bounds)
        rows = self._execute(
            "SELECT machine, status, COUNT(*), TOTAL(upload_bytes), TOTAL(download_bytes),"  # noqa: S608 - only "?" placeholders are joined in
            " TOTAL(upload_paths), TOTAL(download_paths), TOTAL(upload_s), TOTAL(build_s),"
            f" TOTAL(download_s), TOTAL(finished - started){buckets}"
            " FROM builds GROUP BY machine, status ORDER BY machine, status",
            list(duration_bounds),
        ).fetchall()
        return [
            BuildTotals(
                machine=row[0],
                status=Outcome(row[1]),
                builds=row[2],
                upload_bytes=int(row[3]),
                download_bytes=int(row[4]),
                upload_paths=int(row[5]),
                download_paths=int(row[6]),
                upload_s=row[7],
                build_s=row[8],
                download_s=row[9],
                duration_s=row[10],
                duration_buckets=tuple(int(n) for n in row[11:]),
            )
            for row in rows
        ]

    def running_builds(self) -> list[BuildRow]:
        """Attempts still running (their hook process is alive), oldest first."""
        rows = self.builds(status=Outcome.RUNNING, limit=10_000)
        return sorted(rows, key=lambda row: row.id)

    def iter_tables(self) -> Iterator[str]:
        """Names of the tables (for tests and ``status --json``)."""
        for (name,) in self._execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            yield str(name)


_SELECT_PROBES: Final = (
    "SELECT uri, time, local_slots, running_builds, load1, cores, disk_free, disk_total, "
    "mem_available, os, problem FROM probes"
)
_BUILD_FIELDS: Final = (
    "id",
    "drv_path",
    "machine",
    "attempt",
    "pid",
    "started",
    "finished",
    "phase",
    "status",
    "error",
    "upload_s",
    "upload_bytes",
    "upload_paths",
    "build_s",
    "download_s",
    "download_bytes",
    "download_paths",
)
_BUILD_COLUMNS: Final = ", ".join(_BUILD_FIELDS)
_BUILD_UPDATABLE: Final = frozenset(_BUILD_FIELDS) - {"id", "drv_path", "pid", "started"}


def _down(row: tuple[str, str, int, float, float]) -> Down:
    uri, reason, failures, since, until = row
    return Down(uri=uri, reason=reason, failures=failures, since=since, until=until)


_ProbeColumns = tuple[
    str,
    float,
    int,
    int | None,
    float | None,
    int | None,
    int | None,
    int | None,
    int | None,
    str | None,
    str | None,
]


def _probe(row: _ProbeColumns) -> ProbeRow:
    uri, when, local_slots, running, load1, cores, disk_free, disk_total, mem, os_, problem = row
    report = BuilderReport(
        running_builds=running,
        load1=load1,
        cores=cores,
        disk_free=disk_free,
        disk_total=disk_total,
        mem_available=mem,
        os=os_,
        problem=problem,
    )
    return ProbeRow(uri=uri, time=when, local_slots=local_slots, report=report)


def _build_row(row: Sequence[object]) -> BuildRow:
    """A `BuildRow` from a row of ``builds``, its phase and status typed (an unknown word
    from a newer nixdist is an error, not a string passed on)."""
    fields: dict[str, Any] = dict(zip(_BUILD_FIELDS, row, strict=True))
    try:
        fields["phase"] = Phase(fields["phase"])
        fields["status"] = Outcome(fields["status"])
    except ValueError as err:
        raise StateError(f"a build row says {err}") from None
    return BuildRow(**fields)


def open_state_db(root: Path, *, create: bool = True) -> StateDB | None:
    """The state database of the state directory `root`; None when it does not exist yet and
    `create` is false. Raises `StateError` (`nixdist.state.advisory` turns that into advice)."""
    if not create and not db_path(root).exists():
        return None
    return StateDB.open(root)
