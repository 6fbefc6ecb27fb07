"""Upload claims: which hook process sends which store path to a builder, path by path.

Nix's ``build-remote`` serialises all uploads to a builder with one lock (NixOS/nix#11083),
so one hook's large upload holds up every other build going there. nixdist claims each path
instead: a hook uploads the paths nobody else is sending, skips past the ones another hook is
sending, and waits for those only when nothing else is left. Nothing is sent twice, and
uploads of different paths to one builder run side by side.

A claim is an exclusive ``flock`` on ``<directory>/<store path base name>``, one directory per
builder, shared by every process of this machine. When an upload is done its holder writes
the time into the file before letting go. The next claimant reads it: a path uploaded after
that claimant asked the builder which paths it lacks is valid there now, and is skipped.
(The builder keeps it: the ``QueryValidPaths`` with ``lock`` made it a temporary GC root of
the session.) A claim whose holder dies is released by the kernel, with no time written, so
the path is sent again by the next claimant: an interrupted upload never counts as done.

Files stay after use (deleting a lock file while another process waits on it would let a
third one claim the same path anew); `UploadClaims.prune` removes the old ones, at most once
an hour.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.transport.locks import flock_within

if TYPE_CHECKING:
    from nixdist.model.store_path import StorePath

#: Claim files untouched for this long are removed by `UploadClaims.prune`.
CLAIM_MAX_AGE_S: Final = 24 * 3600.0
#: The longest a hook waits for another to finish sending a path it needs too (a sender whose
#: builder stopped answering gives up well before, on ssh's keep-alives).
CLAIM_WAIT_S: Final = 3600.0
_PRUNE_STAMP: Final = ".pruned"
_PRUNE_EVERY_S: Final = 3600.0
_MARKER_MAX: Final = 64


class Claim:
    """This process's exclusive right to upload one path (until `release`)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def uploaded_since(self, when: float) -> bool:
        """Whether a previous holder finished uploading the path at or after `when`."""
        try:
            text = os.pread(self._fd, _MARKER_MAX, 0)
        except OSError:
            return False
        try:
            return float(text.decode("ascii")) >= when
        except ValueError:  # empty (never uploaded, or its holder died) or damaged
            return False

    def mark_uploaded(self) -> None:
        """The path is valid at the destination now: say so to the next claimant."""
        stamp = repr(time.time()).encode("ascii")
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, stamp, 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class UploadClaims:
    """The upload claims on one destination store (a directory of lock files)."""

    __slots__ = ("directory",)

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _open(self, path: StorePath) -> int:
        file = self.directory / path.basename
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(file, flags, 0o600)
        except FileNotFoundError:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(file, flags, 0o600)

    def try_claim(self, path: StorePath) -> Claim | None:
        """Claim `path` if nobody else holds it; None when another process is sending it."""
        fd = self._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Claim(fd)

    def wait(self, path: StorePath, *, timeout_s: float = CLAIM_WAIT_S) -> None:
        """Block until nobody holds a claim on `path` (it is then not claimed by us either),
        at most `timeout_s`."""
        fd = self._open(path)
        try:
            what = f"{self.directory / path.basename} (another hook sending {path})"
            flock_within(fd, timeout_s=timeout_s, what=what, shared=True)
        finally:
            os.close(fd)

    def prune(self, *, max_age_s: float = CLAIM_MAX_AGE_S, now: float | None = None) -> int:
        """Remove claim files unused for `max_age_s`, at most once an hour; how many went."""
        now = time.time() if now is None else now
        stamp = self.directory / _PRUNE_STAMP
        try:
            if now - stamp.stat().st_mtime < _PRUNE_EVERY_S:
                return 0
        except FileNotFoundError:
            pass
        except OSError:
            return 0
        removed = 0
        with contextlib.suppress(OSError):
            stamp.touch(mode=0o600)
            for entry in os.scandir(self.directory):
                if entry.name == _PRUNE_STAMP:
                    continue
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > max_age_s:
                        Path(entry.path).unlink()
                        removed += 1
        return removed
