"""How long each build will take, from the history: the critical path's weights.

Derivations change hash with every change of their inputs, so the history is matched by
derivation *name* (``hello-2.12``): the median of that name's recent successful builds (their
build phase), each multiplied by the speed factor of the machine it ran on, so that an
estimate is work at speed factor 1 (a machine of speed 4 is taken to do it in a quarter of
that time; `nixdist.engine.placement`). A name the history does not know gets the graph's
default.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def derivation_name(drv_path: str) -> str:
    """``/nix/store/<hash>-hello-2.12.drv`` → ``hello-2.12``."""
    return drv_path.rsplit("/", 1)[-1].partition("-")[2].removesuffix(".drv")


class Estimates:
    """The median work of each derivation name in `history` ((drv path, machine, seconds)),
    `speed_of` a machine (1 for one it does not know)."""

    def __init__(
        self, history: Iterable[tuple[str, str, float]], speed_of: Callable[[str], float]
    ) -> None:
        times: defaultdict[str, list[float]] = defaultdict(list)
        for drv_path, machine, seconds in history:
            times[derivation_name(drv_path)].append(seconds * speed_of(machine))
        self._median = {name: statistics.median(values) for name, values in times.items()}

    def __call__(self, drv_path: str) -> float | None:
        return self._median.get(derivation_name(drv_path))

    def __len__(self) -> int:
        return len(self._median)
