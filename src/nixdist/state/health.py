"""Which builders are down, remembered across hook processes (design.md §6).

Nix starts a hook process per accepted build, and ``build-remote`` forgets a builder that failed
to connect as soon as its process ends, so a dead builder costs every build a connection attempt
(NixOS/nix#13513). nixdist records a failed connection in the state database (``health`` table
of `nixdist.state.db`) and skips the builder, with that reason, until the record's ``until``.
The pause doubles with each consecutive failure (`BACKOFF_BASE_S` up to `BACKOFF_MAX_S`), like
Hydra's queue runner disabling a failing machine for longer each time; the first hook that
tries again after it either clears the record (the builder answered) or doubles the pause. Two
hooks failing at once may count one failure, which only shortens a pause.

Health is advice: when the database cannot be read or written the builder counts as up, and
a build never fails because of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from nixdist.state.rows import Down

if TYPE_CHECKING:
    from nixdist.state.advisory import Advisory

BACKOFF_BASE_S: Final = 30.0
BACKOFF_MAX_S: Final = 600.0

__all__ = ["BACKOFF_BASE_S", "BACKOFF_MAX_S", "Down", "Health", "backoff"]


def backoff(failures: int) -> float:
    """Seconds to skip a builder after `failures` consecutive failed connections."""
    doublings = min(max(0, failures - 1), 32)
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * (1 << doublings))


class Health:
    """The health records of the builders, in the state database (advice: when it cannot be
    read or written, every builder is up and failures are counted from here)."""

    def __init__(self, advice: Advisory) -> None:
        self._advice = advice

    def down(self, uri: str, *, now: float | None = None) -> Down | None:
        """The record of `uri` if it is to be skipped now, else None."""
        now = time.time() if now is None else now
        record = self._advice(lambda db: db.health(uri), None)
        return record if record is not None and now < record.until else None

    def failed(self, uri: str, reason: str, *, now: float | None = None) -> Down:
        """Record a failed connection to (or a lost build on) `uri`; returns the new record."""
        now = time.time() if now is None else now
        previous = self._advice(lambda db: db.health(uri), None)
        failures = previous.failures + 1 if previous is not None else 1
        since = previous.since if previous is not None else now
        record = Down(
            uri=uri, reason=reason, failures=failures, since=since, until=now + backoff(failures)
        )
        self._advice(lambda db: db.put_health(record), None)
        return record

    def answered(self, uri: str) -> None:
        """`uri` connected: forget its failures."""
        self._advice(lambda db: db.clear_health(uri), None)
