"""Pure scheduling policy: which machine takes a build, and why the others do not.

Nothing here does I/O: the caller collects machine states (slot locks, health, remote load),
calls `choose`, and acts on the returned `Decision` (design.md §6, style.md habit 3).
"""

from nixdist.scheduler.policy import (
    BUILTIN_SYSTEM,
    Accept,
    Decision,
    Decline,
    LocalCapabilities,
    MachineState,
    Postpone,
    Rejection,
    RejectReason,
    RemoteLoad,
    WarnRule,
    can_build_locally,
    choose,
    could_build_locally,
    render_decision,
    render_no_machine_report,
    render_rejections,
)

__all__ = [
    "BUILTIN_SYSTEM",
    "Accept",
    "Decision",
    "Decline",
    "LocalCapabilities",
    "MachineState",
    "Postpone",
    "RejectReason",
    "Rejection",
    "RemoteLoad",
    "WarnRule",
    "can_build_locally",
    "choose",
    "could_build_locally",
    "render_decision",
    "render_no_machine_report",
    "render_rejections",
]
