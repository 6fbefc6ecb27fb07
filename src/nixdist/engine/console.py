"""What a ``nixdist build`` run tells its user, one line per event on stderr.

It is also what the hook's picker says through (`nixdist.hook.picker.Say`): its warnings and
errors are plain lines here, not Nix's ``@nix`` log lines.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from nixdist.engine.places import HERE
from nixdist.protocol.logjson import Verbosity

if TYPE_CHECKING:
    from collections.abc import Callable


def _name(drv_path: str) -> str:
    return drv_path.rsplit("/", 1)[-1].split("-", 1)[-1].removesuffix(".drv")


def _where(place: str) -> str:
    return "here" if place == HERE else place


class Console:
    """Plain lines on a stream (stderr), with the run's elapsed time."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        verbosity: Verbosity = Verbosity.INFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self.verbosity = verbosity
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self._stream.write(f"[{self._clock() - self._start:6.1f}s] {text}\n")
            self._stream.flush()

    # -- the picker's Say ----------------------------------------------------------------

    def wants(self, level: Verbosity) -> bool:
        return level <= self.verbosity

    def log(self, level: Verbosity, text: str) -> None:
        if self.wants(level):
            self._line(text)

    def debug(self, text: str) -> None:
        self.log(Verbosity.DEBUG, text)

    def error(self, text: str) -> None:
        self._line(f"error: {text}")

    def warn(self, text: str) -> None:
        self.log(Verbosity.WARN, f"warning: {text}")

    # -- the run's events ------------------------------------------------------------------

    def planned(self, count: int, machines: int, lower_bound: float) -> None:
        self.log(
            Verbosity.INFO,
            f"{count} derivations to build on {machines} machines"
            f" (at least {lower_bound:.1f} s, by the times in the history)",
        )

    def started(self, drv_path: str, place: str) -> None:
        self.log(Verbosity.INFO, f"building '{_name(drv_path)}' on {_where(place)}")

    def built(self, drv_path: str, place: str) -> None:
        self.log(Verbosity.TALKATIVE, f"built '{_name(drv_path)}' on {_where(place)}")

    def failed(self, drv_path: str, place: str, message: str) -> None:
        where = f" on {_where(place)}" if place else ""
        self.error(f"cannot build '{drv_path}'{where}: {message}")

    def moved(self, drv_path: str, machine: str, reason: str) -> None:
        self.warn(f"'{machine}' failed under '{_name(drv_path)}': {reason}; building it again")
