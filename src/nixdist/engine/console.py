"""What a ``nixdist build`` run tells its user, on stderr.

On a terminal, a live board redrawn a few times a second: per builder its running builds, its
slots in use, the builds done and the bytes sent to it; the totals; the critical path still
ahead. Elsewhere (a pipe, a CI log) or with ``-v``, plain lines, one per event, each with the
run's elapsed time. Warnings and errors are lines in both (above the board on a terminal).

It is also what the hook's picker says through (`nixdist.hook.picker.Say`): its warnings and
errors are plain lines here, not Nix's ``@nix`` log lines.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from nixdist.engine.places import HERE
from nixdist.protocol.logjson import Verbosity
from nixdist.scheduler.policy import format_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rich.live import Live
    from rich.table import Table

    from nixdist.model.machines import Machine
    from nixdist.scheduler.graph import GraphCounts

#: How often the board is redrawn (per second).
REFRESH_PER_S = 4


def _name(drv_path: str) -> str:
    return drv_path.rsplit("/", 1)[-1].split("-", 1)[-1].removesuffix(".drv")


def _where(place: str) -> str:
    return "here" if place == HERE else place


@dataclass(slots=True)
class _PlaceState:
    running: list[str] = field(default_factory=list)
    built: int = 0
    bytes_in: int = 0


class Console:
    """Lines, or a live board with lines above it (`live`)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        verbosity: Verbosity = Verbosity.INFO,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self.verbosity = verbosity
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        if live is None:
            live = self._stream.isatty() and verbosity == Verbosity.INFO
        self._live: Live | None = None
        self._wants_live = live
        self._places: dict[str, _PlaceState] = {}
        self._slots: dict[str, int] = {}
        self._counts: GraphCounts | None = None
        self._remaining = 0.0

    # -- the board ---------------------------------------------------------------------------

    def begin(self, machines: Sequence[Machine], local_jobs: int) -> None:
        """The run starts: the board's rows are these machines (and here)."""
        self._slots = {m.uri: m.max_jobs for m in machines}
        if local_jobs:
            self._slots[HERE] = local_jobs
        self._places = {place: _PlaceState() for place in self._slots}
        if self._wants_live:
            from rich.console import Console as RichConsole  # noqa: PLC0415 - terminals only
            from rich.live import Live  # noqa: PLC0415

            self._live = Live(
                get_renderable=self._board,
                console=RichConsole(file=self._stream),
                refresh_per_second=REFRESH_PER_S,
                transient=False,
            )
            self._live.start()

    def progress(self, counts: GraphCounts, remaining_critical_path: float) -> None:
        with self._lock:
            self._counts, self._remaining = counts, remaining_critical_path

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _board(self) -> Table:
        from rich.table import Table  # noqa: PLC0415 - terminals only

        with self._lock:
            table = Table(title=self._title(), title_justify="left", expand=False)
            for name in ("machine", "slots", "running", "built", "sent to it"):
                table.add_column(
                    name, justify="left" if name in {"machine", "running"} else "right"
                )
            for place, state in self._places.items():
                running = ", ".join(_name(d) for d in state.running[:3])
                if len(state.running) > 3:  # noqa: PLR2004 - a few names, then a count
                    running += f" +{len(state.running) - 3}"
                table.add_row(
                    _where(place),
                    f"{len(state.running)}/{self._slots.get(place, 0)}",
                    running,
                    str(state.built),
                    format_bytes(state.bytes_in),
                )
            return table

    def _title(self) -> str:
        elapsed = f"{self._clock() - self._start:.1f} s"
        c = self._counts
        if c is None:
            return elapsed
        return (
            f"{elapsed}: {c.built}/{c.total} built, {c.running} running, {c.pending} to go"
            + (f", {c.failed + c.cannot_build} failed" if c.failed + c.cannot_build else "")
            + f"; critical path ahead ≈ {self._remaining:.1f} s"
        )

    # -- lines -------------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        line = f"[{self._clock() - self._start:6.1f}s] {text}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
            return
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

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
        with self._lock:
            self._places.setdefault(place, _PlaceState()).running.append(drv_path)
        if self._live is None:
            self.log(Verbosity.INFO, f"building '{_name(drv_path)}' on {_where(place)}")

    def sent(self, place: str, nar_bytes: int) -> None:
        with self._lock:
            self._places.setdefault(place, _PlaceState()).bytes_in += nar_bytes

    def _stopped(self, drv_path: str, place: str, *, built: bool) -> None:
        with self._lock:
            state = self._places.setdefault(place, _PlaceState())
            if drv_path in state.running:
                state.running.remove(drv_path)
            state.built += built

    def built(self, drv_path: str, place: str) -> None:
        self._stopped(drv_path, place, built=True)
        self.log(Verbosity.TALKATIVE, f"built '{_name(drv_path)}' on {_where(place)}")

    def failed(self, drv_path: str, place: str, message: str) -> None:
        if place:
            self._stopped(drv_path, place, built=False)
        where = f" on {_where(place)}" if place else ""
        self.error(f"cannot build '{drv_path}'{where}: {message}")

    def moved(self, drv_path: str, machine: str, reason: str) -> None:
        self._stopped(drv_path, machine, built=False)
        self.warn(f"'{machine}' failed under '{_name(drv_path)}': {reason}; building it again")
