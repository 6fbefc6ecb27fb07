"""What is going on: machines, running builds, recent builds — for ``nixdist status``, the
dashboard and ``/metrics``, read from the state database and Nix's slot locks.

Nothing here connects to a builder: the load shown is the last report a hook probed
(`nixdist.state.db`, ``probes``), with its age.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nixdist.errors import StateError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nixdist.model.machines import Machine
    from nixdist.state.db import StateDB
    from nixdist.state.rows import BuildRow, Down, ProbeRow
    from nixdist.state.slots import SlotDirectory


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineStatus:
    """One machine of the machines file, as this host sees it now."""

    machine: Machine
    slots_in_use: int
    down: Down | None  # set while it is skipped (back-off not over)
    last_failure: Down | None  # the last failure record, even when its back-off is over
    probe: ProbeRow | None
    running: int  # remote builds this host runs there now (history)

    def to_json(self, now: float) -> dict[str, Any]:
        m = self.machine
        return {
            "uri": m.uri,
            "systems": list(m.systems),
            "max_jobs": m.max_jobs,
            "speed_factor": m.speed_factor,
            "supported_features": sorted(m.supported_features),
            "mandatory_features": sorted(m.mandatory_features),
            "slots_in_use": self.slots_in_use,
            "running_builds": self.running,
            "up": self.down is None,
            "down": None if self.down is None else _down_json(self.down, now),
            "last_failure": (
                None if self.last_failure is None else _down_json(self.last_failure, now)
            ),
            "probe": None if self.probe is None else _probe_json(self.probe, now),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """Machines, running builds (oldest first) and recent finished builds (newest first)."""

    time: float
    machines: tuple[MachineStatus, ...]
    running: tuple[BuildRow, ...]
    recent: tuple[BuildRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "machines": [m.to_json(self.time) for m in self.machines],
            "running": [build_json(b, self.time) for b in self.running],
            "recent": [build_json(b, self.time) for b in self.recent],
        }


def status_report(
    machines: Sequence[Machine],
    db: StateDB | None,
    slots: SlotDirectory,
    *,
    recent: int = 20,
    now: float | None = None,
) -> StatusReport:
    """Gather the status; a missing or broken database shows as no history."""
    now = time.time() if now is None else now
    loads = slots.count_loads(machines) if machines else []
    health: dict[str, Down] = {}
    probes: dict[str, ProbeRow] = {}
    running: list[BuildRow] = []
    finished: list[BuildRow] = []
    if db is not None:
        try:
            health = {d.uri: d for d in db.all_health()}
            probes = {p.uri: p for p in db.all_probes()}
            running = db.running_builds()
            finished = [
                b for b in db.builds(limit=recent + len(running)) if b.effective_status != "running"
            ][:recent]
        except StateError:
            pass
    statuses = tuple(
        MachineStatus(
            machine=m,
            slots_in_use=load,
            down=(d if (d := health.get(m.uri)) is not None and now < d.until else None),
            last_failure=health.get(m.uri),
            probe=probes.get(m.uri),
            running=sum(1 for b in running if b.machine == m.uri),
        )
        for m, load in zip(machines, loads, strict=True)
    )
    return StatusReport(time=now, machines=statuses, running=tuple(running), recent=tuple(finished))


def build_json(build: BuildRow, now: float) -> dict[str, Any]:
    """One build attempt as JSON (durations in seconds; ``elapsed`` for running ones)."""
    return {
        "id": build.id,
        "drv_path": build.drv_path,
        "machine": build.machine,
        "attempt": build.attempt,
        "status": build.effective_status,
        "phase": build.phase,
        "started": build.started,
        "finished": build.finished,
        "duration": build.duration_s,
        "elapsed": (now - build.started) if build.finished is None else build.duration_s,
        "error": build.error,
        "upload": {
            "seconds": build.upload_s,
            "bytes": build.upload_bytes,
            "paths": build.upload_paths,
        },
        "build": {"seconds": build.build_s},
        "download": {
            "seconds": build.download_s,
            "bytes": build.download_bytes,
            "paths": build.download_paths,
        },
    }


def _down_json(down: Down, now: float) -> dict[str, Any]:
    return {
        "reason": down.reason,
        "failures": down.failures,
        "since": down.since,
        "until": down.until,
        "retry_in": max(0.0, down.until - now),
    }


def _probe_json(probe: ProbeRow, now: float) -> dict[str, Any]:
    r = probe.report
    return {
        "time": probe.time,
        "age": max(0.0, now - probe.time),
        "running_builds": r.running_builds,
        "other_builds": probe.other_builds,
        "load1": r.load1,
        "cores": r.cores,
        "load_per_core": r.load_per_core,
        "disk_free": r.disk_free,
        "disk_total": r.disk_total,
        "mem_available": r.mem_available,
        "os": r.os,
        "problem": r.problem,
    }
