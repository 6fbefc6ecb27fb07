"""Waiting for a file lock, with a bound.

Every lock nixdist waits for is a BSD ``flock`` held by another process of this machine (a
hook choosing a machine, a hook sending a path, a hook starting an ssh master). Such a holder
may be stuck (stopped, or waiting itself on a dead peer); nixdist never waits for it without
end: `flock_within` tries the lock, and retries with a growing pause until it gets it or
`timeout_s` has passed, then raises `LockTimeoutError` naming the lock and how long it waited.
An uncontended lock costs one system call, as a plain blocking ``flock`` does.
"""

from __future__ import annotations

import fcntl
import time
from typing import Final

from nixdist.errors import TransportTimeoutError

_FIRST_PAUSE_S: Final = 0.002
_MAX_PAUSE_S: Final = 0.1


class LockTimeoutError(TransportTimeoutError):
    """A lock was not free within its bound."""


def flock_within(fd: int, *, timeout_s: float, what: str, shared: bool = False) -> None:
    """Take an ``flock`` on `fd` (exclusive unless `shared`), waiting at most `timeout_s`."""
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_PAUSE_S
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeoutError(
                f"waited {timeout_s:g} s for {what}: another process holds it and is not letting go"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_PAUSE_S)
