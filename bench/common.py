"""Helpers shared by the benchmarks: paths, statistics, tables and result files.

Nothing here times anything by itself; every benchmark reports best and median of its runs and
never fails on a time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO: Final = BENCH_DIR.parent
RESULTS_DIR: Final = BENCH_DIR / "results"
FIXTURES: Final = REPO / "tests" / "fixtures"

#: The venv's interpreter and console scripts (the benchmarks run with the venv's python).
PYTHON: Final = Path(sys.executable)
NIXDIST_HOOK: Final = PYTHON.with_name("nixdist-hook")
NIXDIST_CLI: Final = PYTHON.with_name("nixdist")
#: Stock Nix 2.8's hook: a symlink to the `nix` binary, which dispatches on argv[0].
BUILD_REMOTE: Final = Path("/usr/libexec/nix/build-remote")
#: Nix's own hook from 2.17 on, as a list setting (program, then arguments): Debian's 2.26 and
#: 2.34 have no ``libexec/nix/build-remote`` any more.
BUILD_REMOTE_LIST: Final = "/usr/bin/nix __build-remote"


def nix_own_hook(client_nix: str | None) -> str:
    """The ``build-hook`` setting that runs Nix's own hook in a client of Nix `client_nix`
    (a farm client, `nixdist.farm.client`; None: the host's Nix 2.8)."""
    if client_nix is None:
        return str(BUILD_REMOTE)
    return str(BUILD_REMOTE) if client_nix == "2.8" else BUILD_REMOTE_LIST


def client_label(client_nix: str | None) -> str:
    """How tables name the client: ``host Nix`` or ``Nix 2.34 client``."""
    return "host Nix" if client_nix is None else f"Nix {client_nix} client"


def missing_tools() -> list[str]:
    """What a benchmark that builds through every contender needs and this machine lacks."""
    missing = [t for t in ("nix-build", "nix-store", "nix-instantiate") if not shutil.which(t)]
    missing += [str(p) for p in (BUILD_REMOTE, NIXDIST_HOOK, NIXDIST_CLI) if not p.exists()]
    return missing


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt, so that a killed benchmark cleans up as on Ctrl-C."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def timestamp() -> str:
    """A file-name-safe local timestamp, e.g. ``20240501-142233``."""
    return dt.datetime.now().astimezone().strftime("%Y%m%d-%H%M%S")


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    nix = subprocess.run(["nix-store", "--version"], capture_output=True, text=True, check=False)
    load = os.getloadavg()
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nix": nix.stdout.strip(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def summary(times: Sequence[float]) -> dict[str, float | int]:
    """Best, median and count of a list of seconds (empty lists give NaN)."""
    if not times:
        return {"best": float("nan"), "median": float("nan"), "runs": 0}
    return {"best": min(times), "median": statistics.median(times), "runs": len(times)}


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; < 1 means nixdist is faster. NaN when either is missing."""
    if math.isnan(ours) or math.isnan(theirs) or theirs <= 0:
        return float("nan")
    return ours / theirs


def fmt_s(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.3f}"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A plain text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def write_json(path: Path, data: object) -> Path:
    """Write `data` as indented JSON (creating the directory); NaN becomes null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")
    tmp.replace(path)
    return path


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Goal:
    """One goal of issue 5: `value` must be at most (or at least) `target`."""

    workload: str
    measure: str
    value: float
    target: float
    at_most: bool = True
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        """None when the value could not be measured."""
        if math.isnan(self.value):
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target

    def describe(self) -> str:
        """``<= 0.35x``, ``>= 1.2x``, ``<= 60 ms``."""
        sign = "<=" if self.at_most else ">="
        target = f"{self.target:g}"
        return f"{sign} {target}{self.unit}" if self.unit == "x" else f"{sign} {target} {self.unit}"

    @property
    def of_target(self) -> float:
        """value / target: how far off the goal (above 1 for a missed "at most", below 1 for a
        missed "at least")."""
        return ratio(self.value, self.target)

    def verdict(self) -> str:
        """``met``, ``MISSED 1.40x the goal``, or ``-`` when not measured."""
        met = self.met
        if met is None:
            return "-"
        return "met" if met else f"MISSED {self.of_target:.2f}x the goal"

    def as_json(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "measure": self.measure,
            "value": self.value,
            "goal": self.describe(),
            "met": self.met,
            "value_over_goal": self.of_target,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the headline table; `goal` None for a line that only informs.

    `ratio` is nixdist-hook / build-remote unless the measure names another ratio."""

    workload: str
    measure: str
    build_remote: str
    nixdist: str  # nixdist-hook
    ratio: str
    nixdist_build: str = ""
    goal: Goal | None = None

    def cells(self) -> list[str]:
        goal = self.goal
        return [
            self.workload,
            self.measure,
            self.build_remote,
            self.nixdist,
            self.nixdist_build,
            self.ratio,
            goal.describe() if goal else "",
            goal.verdict() if goal else "",
        ]


ROW_HEADERS: Final = (
    "workload",
    "measure",
    "build-remote",
    "nixdist-hook",
    "nixdist-build",
    "ratio",
    "goal",
    "",
)


def row_headers(client_nix: str | None) -> tuple[str, ...]:
    """`ROW_HEADERS`, with the client's version on Nix's own hook when it is not the host's."""
    if client_nix is None:
        return ROW_HEADERS
    return tuple(f"build-remote {client_nix}" if h == "build-remote" else h for h in ROW_HEADERS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one workload reports: its JSON section, its table lines and its goals."""

    key: str
    data: dict[str, object]
    rows: tuple[Row, ...]
    goals: tuple[Goal, ...]
    notes: tuple[str, ...] = ()


def med_best(times: Sequence[float], *, scale: float = 1.0, digits: int = 2) -> str:
    """``median [best]`` of `times` times `scale`; ``-`` when empty."""
    if not times:
        return "-"
    return f"{statistics.median(times) * scale:.{digits}f} [{min(times) * scale:.{digits}f}]"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
