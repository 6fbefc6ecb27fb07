"""Copy progress in Nix's own UI: ``@nix`` activities for the hook's uploads and downloads.

After ``# accept`` Nix takes ``start``/``result``/``stop`` lines on the hook's stderr as its own
activities (nix-protocols.md §1.7), so ``nix build``'s progress bar counts what the hook
copies ("3 copied (12.5 MiB)") and ``-v`` prints which path goes to or from which builder —
the same activities ``build-remote`` produces through Nix's ``copyPaths``:

    CopyPaths  "copying 12 paths to 'ssh://b1'"      expected bytes (SetExpected), paths done
      CopyPath "copying path '/nix/store/…' to 'ssh://b1'"   fields: path, from, to
               Progress [bytes done, NAR size, 0, 0], at most every `PROGRESS_EVERY_S`
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Final

from nixdist.protocol.logjson import (
    LOG_FILE_TYPE,
    ActivityType,
    Result,
    ResultType,
    Start,
    Stop,
    Verbosity,
)
from nixdist.transport.child import write_all

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nixdist.hook.output import HookOutput
    from nixdist.model.path_info import PathInfo
    from nixdist.protocol.logjson import LogMessage

#: Nix's name for the local store in copy messages.
LOCAL_STORE: Final = "local"
#: Byte progress of one path is reported at most this often (and when it is complete).
PROGRESS_EVERY_S: Final = 0.2

_ids = itertools.count(1)


class CopyActivities:
    """A `nixdist.store.copy.CopyProgress` that shows one copy as Nix activities."""

    def __init__(self, out: HookOutput, *, source: str, destination: str) -> None:
        self._out = out
        self._source = source
        self._destination = destination
        self._all: int | None = None  # the CopyPaths activity
        self._total = 0
        self._done = 0
        self._path: int | None = None  # the CopyPath activity of the path being sent
        self._last = 0.0

    def _describe(self, what: str) -> str:
        if self._source == LOCAL_STORE:
            return f"{what} to '{self._destination}'"
        return f"{what} from '{self._source}'"

    def planned(self, infos: Sequence[PathInfo]) -> None:
        if not infos or self._all is not None:
            return
        self._all = next(_ids)
        self._total = len(infos)
        self._out.event(
            Start(
                id=self._all,
                level=Verbosity.INFO,
                type=ActivityType.COPY_PATHS,
                text=self._describe(f"copying {len(infos)} paths"),
            )
        )
        expected = sum(info.nar_size for info in infos)
        self._out.event(
            Result(
                id=self._all,
                type=ResultType.SET_EXPECTED,
                fields=(int(ActivityType.COPY_PATH), expected),
            )
        )
        self._paths_progress(running=0)

    def _paths_progress(self, *, running: int) -> None:
        if self._all is not None:
            self._out.event(
                Result(
                    id=self._all,
                    type=ResultType.PROGRESS,
                    fields=(self._done, self._total, running, 0),
                )
            )

    def path_started(self, info: PathInfo) -> None:
        self._path = next(_ids)
        self._out.event(
            Start(
                id=self._path,
                level=Verbosity.INFO,
                type=ActivityType.COPY_PATH,
                text=self._describe(f"copying path '{info.path}'"),
                fields=(str(info.path), self._source, self._destination),
                parent=self._all,
            )
        )
        self._last = time.monotonic()
        self._paths_progress(running=1)

    def path_progress(self, info: PathInfo, done: int) -> None:
        now = time.monotonic()
        if self._path is None or (now - self._last < PROGRESS_EVERY_S and done < info.nar_size):
            return
        self._last = now
        self._out.event(
            Result(id=self._path, type=ResultType.PROGRESS, fields=(done, info.nar_size, 0, 0))
        )

    def path_done(self, info: PathInfo) -> None:
        if self._path is not None:
            self._out.event(Stop(id=self._path))
            self._path = None
        self._done += 1
        self._paths_progress(running=0)
        del info  # named when it started

    def close(self) -> None:
        """End whatever activity is still open (also after a failed copy)."""
        for activity in (self._path, self._all):
            if activity is not None:
                self._out.event(Stop(id=activity))
        self._path = self._all = None


class RemoteLog:
    """Where a daemon builder's log stream goes (``ssh-ng://``): its build log lines (results
    of type 101) to the build-log pipe, as an ``ssh://`` builder's stderr goes, so Nix keeps
    them for ``nix log``; its other activities, results and messages to Nix as the hook's own
    ``@nix`` lines, as ``build-remote`` forwards them. The daemon's activity ids (its pid in
    the high 32 bits) do not meet ours (small counters)."""

    def __init__(self, out: HookOutput, log_fd: int) -> None:
        self._out = out
        self._log_fd = log_fd

    def __call__(self, message: LogMessage) -> None:
        if isinstance(message, Result) and message.type == LOG_FILE_TYPE:
            line = message.fields[0] if message.fields else ""
            write_all(self._log_fd, f"{line}\n".encode("utf-8", "surrogateescape"))
            return
        self._out.event(message)
