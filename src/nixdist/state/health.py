"""Which builders are down, remembered across hook processes (design.md §6).

Nix starts a hook process per accepted build, and ``build-remote`` forgets a builder that failed
to connect as soon as its process ends, so a dead builder costs every build a connection attempt
(NixOS/nix#13513). nixdist records a failed connection in the state directory::

    <state dir>/health/<escape(uri)>.json   {"failures": n, "since": t0, "until": t1, "reason": "…"}

and skips the builder, with that reason, until ``until``. The pause doubles with each
consecutive failure (`BACKOFF_BASE_S` up to `BACKOFF_MAX_S`); the first hook that tries again
after it either clears the record (the builder answered) or doubles the pause. Records are
replaced atomically; two hooks failing at once may count one failure, which only shortens a
pause.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.state.slots import escape_uri

if TYPE_CHECKING:
    from pathlib import Path

BACKOFF_BASE_S: Final = 30.0
BACKOFF_MAX_S: Final = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Down:
    """A builder that failed to connect: why, since when, and until when it is skipped."""

    reason: str
    failures: int
    since: float
    until: float

    def describe(self, now: float) -> str:
        left = max(0, round(self.until - now))
        times = f"{self.failures} times, " if self.failures > 1 else ""
        return f"{self.reason} ({times}retrying in {left} s)"


def backoff(failures: int) -> float:
    """Seconds to skip a builder after `failures` consecutive failed connections."""
    doublings = min(max(0, failures - 1), 32)
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * (1 << doublings))


class Health:
    """The health records of the builders, in one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "health"

    def _path(self, uri: str) -> Path:
        return self._dir / f"{escape_uri(uri)}.json"

    def _read(self, uri: str) -> Down | None:
        try:
            data = json.loads(self._path(uri).read_text())
            return Down(
                reason=str(data["reason"]),
                failures=int(data["failures"]),
                since=float(data["since"]),
                until=float(data["until"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record, or one we cannot read: treat the builder as up

    def down(self, uri: str, *, now: float | None = None) -> Down | None:
        """The record of `uri` if it is to be skipped now, else None."""
        now = time.time() if now is None else now
        record = self._read(uri)
        return record if record is not None and now < record.until else None

    def failed(self, uri: str, reason: str, *, now: float | None = None) -> Down:
        """Record a failed connection to `uri`; returns the new record."""
        now = time.time() if now is None else now
        previous = self._read(uri)
        failures = previous.failures + 1 if previous is not None else 1
        since = previous.since if previous is not None else now
        record = Down(reason=reason, failures=failures, since=since, until=now + backoff(failures))
        with contextlib.suppress(OSError):  # health is advice: never fail a build over it
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._path(uri)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(
                json.dumps(
                    {"reason": reason, "failures": failures, "since": since, "until": record.until}
                )
            )
            tmp.replace(path)
        return record

    def answered(self, uri: str) -> None:
        """`uri` connected: forget its failures."""
        with contextlib.suppress(OSError):
            self._path(uri).unlink()
