"""The state database's rows, as the rest of nixdist reads them (`nixdist.state.db` stores them).

`Outcome` and `Phase` are an attempt's words; `BuildRow` one remote build attempt, `DecisionRow`
one answer to Nix's ``try``, `Down` a builder skipped after failing, `ProbeRow` a builder's
last load report, `BuildTotals` the sums ``/metrics`` shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from nixdist.scheduler.policy import RemoteLoad

if TYPE_CHECKING:
    from nixdist.transport.probe import BuilderReport


class Phase(StrEnum):
    """Where a remote build attempt is."""

    CONNECT = "connect"
    UPLOAD = "upload"
    BUILD = "build"
    DOWNLOAD = "download"
    DONE = "done"


class Outcome(StrEnum):
    """How a remote build attempt ended (or that it has not yet)."""

    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"  # the build itself failed: Nix is told 100
    TIMED_OUT = "timed-out"  # 101
    LOST = "lost"  # the builder or the connection failed: the build moves elsewhere
    ERROR = "error"  # anything else (local store, protocol): exit 1
    INTERRUPTED = "interrupted"  # the hook process went away while it ran


@dataclass(frozen=True, slots=True, kw_only=True)
class Down:
    """A builder that failed to connect: why, since when, and until when it is skipped."""

    uri: str
    reason: str
    failures: int
    since: float
    until: float

    def describe(self, now: float) -> str:
        left = max(0, round(self.until - now))
        times = f"{self.failures} times, " if self.failures > 1 else ""
        return f"{self.reason} ({times}retrying in {left} s)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRow:
    """A builder's last self-report (`nixdist.transport.probe`), when it was made, and how many
    of its slots this machine held then (those builds are ours, not other clients')."""

    uri: str
    time: float
    local_slots: int
    report: BuilderReport

    @property
    def other_builds(self) -> int:
        """Builds running on the builder that no slot of this machine accounted for."""
        if self.report.running_builds is None:
            return 0  # not told: this machine's slots are all we know, as with build-remote
        return max(0, self.report.running_builds - self.local_slots)

    def remote_load(self) -> RemoteLoad:
        """The scheduler's view of this report."""
        return RemoteLoad(
            other_builds=self.other_builds,
            disk_free=self.report.disk_free,
            load_per_core=self.report.load_per_core,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRow:
    """One answer to Nix's ``try``."""

    id: int
    time: float
    pid: int
    drv_path: str
    system: str
    features: tuple[str, ...]
    decision: str
    machine: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRow:
    """One remote build attempt."""

    id: int
    drv_path: str
    machine: str
    attempt: int
    pid: int
    started: float
    finished: float | None
    phase: Phase
    status: Outcome
    error: str | None
    upload_s: float | None
    upload_bytes: int | None
    upload_paths: int | None
    build_s: float | None
    download_s: float | None
    download_bytes: int | None
    download_paths: int | None

    @property
    def effective_status(self) -> Outcome:
        """The status, with a ``running`` attempt whose hook has gone shown as interrupted."""
        if self.status == Outcome.RUNNING and not _pid_alive(self.pid):
            return Outcome.INTERRUPTED
        return self.status

    @property
    def duration_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildTotals:
    """Sums over the build attempts of one machine with one stored status (``/metrics``)."""

    machine: str
    status: Outcome  # as stored: "running" may be interrupted (`BuildRow.effective_status`)
    builds: int
    upload_bytes: int
    download_bytes: int
    upload_paths: int
    download_paths: int
    upload_s: float
    build_s: float
    download_s: float
    duration_s: float  # sum of finished - started over finished attempts
    duration_buckets: tuple[int, ...]  # finished attempts that took <= each bound


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
