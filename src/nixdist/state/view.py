"""What this host sees of a builder, for the scheduler: the one place where its slots, its
health and its load report become a `MachineState`.

The hook's choice (`nixdist.hook.picker`) and ``nixdist explain`` both build their states here,
so that explain says what the hook would do by construction, not by parallel code. A load
report is used while it is at most `REPORT_MAX_AGE_INTERVALS` probe intervals old (the hook
renews it after one interval; an older one says too little about now to weigh builders by).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from nixdist.scheduler.policy import MachineState

if TYPE_CHECKING:
    from nixdist.model.machines import Machine
    from nixdist.scheduler.policy import RemoteLoad
    from nixdist.state.rows import ProbeRow

#: A load report older than this many probe intervals is not used at all.
REPORT_MAX_AGE_INTERVALS: Final = 6


def usable_load(
    report: ProbeRow | None, *, now: float, probe_interval_s: float
) -> RemoteLoad | None:
    """The builder's own load, from its report if that is recent enough to go by."""
    if report is None or probe_interval_s <= 0:
        return None
    if now - report.time > probe_interval_s * REPORT_MAX_AGE_INTERVALS:
        return None
    return report.remote_load()


def machine_state(
    machine: Machine,
    *,
    slots_in_use: int,
    free_slot: bool,
    down_reason: str | None,
    report: ProbeRow | None,
    now: float,
    probe_interval_s: float,
) -> MachineState:
    """The scheduler's view of `machine` from what this host knows of it now."""
    return MachineState(
        machine=machine,
        load=slots_in_use,
        free_slot=free_slot,
        down_reason=down_reason,
        remote_load=usable_load(report, now=now, probe_interval_s=probe_interval_s),
    )
