"""Where a build of this run finishes first: Nix's choice, or a faster machine soon free.

Nix's rule (`nixdist.scheduler.policy.choose`, through the hook's picker) takes the least
loaded machine with a free slot *now*. A run knows more: each build's expected work (the
graph's estimate, at speed factor 1) and when its own running builds should end. So after the
picker accepts a machine, the run asks `Placement.better`: is there a machine that fits, is
not down, and would finish this build clearly sooner (by `MARGIN`) — one with a free slot now
(then the run takes a slot there instead) or one whose next build of ours ends soon (then the
build waits for it)? Near the end of a run this keeps the last builds off slow machines
(bench W3). What other clients run on a machine is not known here: a machine is counted free
when fewer of its slots than its max-jobs hold builds of this run, and if that is wrong the
picker's answer for it (busy) says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.scheduler.policy import earliest_finish, finish_time, machine_fits

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nixdist.model.machines import Machine
    from nixdist.model.request import BuildRequest

#: How much sooner another machine must finish a build for the run to prefer it.
MARGIN: Final = 0.8


@dataclass(frozen=True, slots=True, kw_only=True)
class Better:
    machine: Machine
    available_in: float  # 0: it has a free slot now


class Placement:
    """The expected end of each running build of this run, by machine."""

    def __init__(self, machines: Sequence[Machine]) -> None:
        self._machines = tuple(machines)
        self._ends: dict[str, dict[str, float]] = {m.uri: {} for m in machines}

    def started(self, drv_path: str, machine: Machine, work: float, now: float) -> None:
        self._ends.setdefault(machine.uri, {})[drv_path] = now + finish_time(work, machine, 0)

    def ended(self, drv_path: str) -> None:
        for ends in self._ends.values():
            ends.pop(drv_path, None)

    def available_in(self, machine: Machine, now: float) -> float:
        """Seconds until `machine` has a slot this run is not using (as far as it knows)."""
        ends = self._ends.get(machine.uri, {})
        if len(ends) < machine.max_jobs:
            return 0.0
        return max(0.0, min(ends.values()) - now)

    def better(
        self,
        request: BuildRequest,
        work: float,
        accepted: Machine,
        *,
        usable: Callable[[Machine], bool],
        now: float,
    ) -> Better | None:
        """A machine that would finish `request` (`work` seconds at speed 1) clearly sooner
        than `accepted` (which has a free slot now), or None."""
        options = [
            (m, 0.0 if m is accepted else self.available_in(m, now))
            for m in self._machines
            if m.max_jobs > 0 and machine_fits(request, m) and (m is accepted or usable(m))
        ]
        best = earliest_finish(work, options)
        if best is None or best[0] is accepted:
            return None
        machine, end = best
        if end >= MARGIN * finish_time(work, accepted, 0.0):
            return None
        return Better(machine=machine, available_in=self.available_in(machine, now))
