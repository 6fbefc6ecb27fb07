"""How long each build will take, from the history: the critical path's weights.

Derivations change hash with every change of their inputs, so the history is matched by
derivation *name* (``hello-2.12``): the median of that name's recent successful builds (their
build phase, on whichever builder). A name the history does not know gets the graph's default.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


def derivation_name(drv_path: str) -> str:
    """``/nix/store/<hash>-hello-2.12.drv`` → ``hello-2.12``."""
    return drv_path.rsplit("/", 1)[-1].partition("-")[2].removesuffix(".drv")


class Estimates:
    """The median build time of each derivation name in `history` ((drv path, seconds))."""

    def __init__(self, history: Iterable[tuple[str, float]]) -> None:
        times: defaultdict[str, list[float]] = defaultdict(list)
        for drv_path, seconds in history:
            times[derivation_name(drv_path)].append(seconds)
        self._median = {name: statistics.median(values) for name, values in times.items()}

    def __call__(self, drv_path: str) -> float | None:
        return self._median.get(derivation_name(drv_path))

    def __len__(self) -> int:
        return len(self._median)
