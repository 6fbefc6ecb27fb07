"""``/metrics``: the state in Prometheus' text format, read from the database at each scrape.

A custom collector (`StateCollector`) builds the metric families from one status report
(`nixdist.state.report`) and one aggregate query over the ``builds`` table (`read_totals`);
no registry is kept between scrapes, so nothing here can drift from the database. Labels:
``machine`` is the builder's store URI as in the machines file (and ``nixdist history
--machine``); counters cover every machine in the history, gauges the machines of the
machines file.

Metrics (counters are totals since the database was created)::

    nixdist_builds_total{machine,status}               finished attempts (built, failed,
                                                       timed-out, lost, error, interrupted)
    nixdist_build_duration_seconds{machine}            histogram of successful attempts,
                                                       connect to outputs back
    nixdist_phase_seconds_total{machine,phase}         upload, build, download time
    nixdist_copied_bytes_total{machine,direction}      NAR bytes sent (upload) and received
    nixdist_copied_paths_total{machine,direction}      store paths sent and received
    nixdist_running_builds{machine}                    this host's remote builds there now
    nixdist_slots_in_use{machine}                      Nix's slot locks held now
    nixdist_machine_max_jobs{machine}                  slots in the machines file
    nixdist_machine_up{machine}                        0 while skipped after a failure
    nixdist_builder_running_builds{machine}            last probe: builds on the builder
    nixdist_builder_load_per_core{machine}             last probe: 1-minute load per core
    nixdist_builder_disk_free_bytes{machine}           last probe: free space of its store
    nixdist_builder_probe_age_seconds{machine}         age of that probe
    nixdist_history_available                          1 when the database could be read

A running attempt is not counted in ``nixdist_builds_total`` until it ends (counters only
grow); its bytes and phase times count as soon as the hook records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from nixdist.errors import StateError
from nixdist.state.report import status_report
from nixdist.state.rows import BuildTotals, Outcome

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nixdist.state.db import StateDB
    from nixdist.state.report import StatusReport
    from nixdist.web.sources import Sources

DURATION_BUCKETS_S: Final = (
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
)
"""Upper bounds of the build-duration histogram (``+Inf`` is added)."""

_INTERRUPTED_LIMIT: Final = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What the counters are made of: totals per machine and status, and how many of the
    attempts stored as running were interrupted (their hook is gone), per machine."""

    totals: tuple[BuildTotals, ...]
    interrupted: dict[str, int]


def read_history(db: StateDB) -> History:
    """One aggregate query over ``builds``, plus the attempts stored as running."""
    totals = tuple(db.build_totals(DURATION_BUCKETS_S))
    interrupted: dict[str, int] = {}
    if any(t.status == Outcome.RUNNING for t in totals):
        for build in db.builds(status=Outcome.INTERRUPTED, limit=_INTERRUPTED_LIMIT):
            interrupted[build.machine] = interrupted.get(build.machine, 0) + 1
    return History(totals=totals, interrupted=interrupted)


def metric_families(report: StatusReport, history: History | None) -> list[Metric]:
    """The metric families for one scrape (pure: no I/O)."""
    families: list[Metric] = []
    if history is not None:
        families.extend(_history_families(history))
    families.extend(_machine_families(report))
    families.append(
        GaugeMetricFamily(
            "nixdist_history_available",
            "1 when the state database exists and could be read.",
            value=0 if history is None else 1,
        )
    )
    return families


def _history_families(history: History) -> Iterable[Metric]:
    builds = CounterMetricFamily(
        "nixdist_builds", "Finished remote build attempts.", labels=["machine", "status"]
    )
    duration = HistogramMetricFamily(
        "nixdist_build_duration_seconds",
        "Wall time of successful remote build attempts, connect to outputs back.",
        labels=["machine"],
    )
    phases = CounterMetricFamily(
        "nixdist_phase_seconds", "Time spent per phase.", labels=["machine", "phase"]
    )
    copied = CounterMetricFamily(
        "nixdist_copied_bytes",
        "NAR bytes copied to and from builders.",
        labels=["machine", "direction"],
    )
    paths = CounterMetricFamily(
        "nixdist_copied_paths",
        "Store paths copied to and from builders.",
        labels=["machine", "direction"],
    )
    sums: dict[str, list[float]] = {}
    for t in history.totals:
        if t.status == Outcome.RUNNING:
            gone = history.interrupted.get(t.machine, 0)
            if gone:
                builds.add_metric([t.machine, Outcome.INTERRUPTED], gone)
        else:
            builds.add_metric([t.machine, t.status], t.builds)
        if t.status == Outcome.BUILT:
            buckets = [
                (repr(bound), count)
                for bound, count in zip(DURATION_BUCKETS_S, t.duration_buckets, strict=True)
            ]
            buckets.append(("+Inf", t.builds))
            duration.add_metric([t.machine], buckets, sum_value=t.duration_s)
        acc = sums.setdefault(t.machine, [0.0] * 7)
        for i, value in enumerate(
            (
                t.upload_s,
                t.build_s,
                t.download_s,
                t.upload_bytes,
                t.download_bytes,
                t.upload_paths,
                t.download_paths,
            )
        ):
            acc[i] += value
    for machine, (up_s, build_s, down_s, up_b, down_b, up_p, down_p) in sums.items():
        phases.add_metric([machine, "upload"], up_s)
        phases.add_metric([machine, "build"], build_s)
        phases.add_metric([machine, "download"], down_s)
        copied.add_metric([machine, "upload"], up_b)
        copied.add_metric([machine, "download"], down_b)
        paths.add_metric([machine, "upload"], up_p)
        paths.add_metric([machine, "download"], down_p)
    return (builds, duration, phases, copied, paths)


def _machine_families(report: StatusReport) -> Iterable[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["machine"])

    running = gauge("nixdist_running_builds", "Remote builds this host runs there now.")
    slots = gauge("nixdist_slots_in_use", "Build slots (Nix's current-load locks) held now.")
    max_jobs = gauge("nixdist_machine_max_jobs", "Maximum jobs in the machines file.")
    up = gauge("nixdist_machine_up", "1 when the machine is used, 0 while it is skipped.")
    probe_running = gauge("nixdist_builder_running_builds", "Builds running, as last probed.")
    load = gauge("nixdist_builder_load_per_core", "1-minute load per core, as last probed.")
    disk = gauge("nixdist_builder_disk_free_bytes", "Free space of the store, as last probed.")
    age = gauge("nixdist_builder_probe_age_seconds", "Age of the last probe.")
    seen: set[str] = set()
    for m in report.machines:
        uri = m.machine.uri
        if uri in seen:  # listed twice: Nix uses both lines, the slots and health are shared
            continue
        seen.add(uri)
        running.add_metric([uri], m.running)
        slots.add_metric([uri], m.slots_in_use)
        max_jobs.add_metric([uri], m.machine.max_jobs)
        up.add_metric([uri], 1 if m.down is None else 0)
        if m.probe is not None:
            r = m.probe.report  # a builder that did not tell a value has no sample of it
            if r.running_builds is not None:
                probe_running.add_metric([uri], r.running_builds)
            if r.load_per_core is not None and math.isfinite(r.load_per_core):
                load.add_metric([uri], r.load_per_core)
            if r.disk_free is not None:
                disk.add_metric([uri], r.disk_free)
            age.add_metric([uri], max(0.0, report.time - m.probe.time))
    return (running, slots, max_jobs, up, probe_running, load, disk, age)


class StateCollector:
    """A Prometheus collector that reads `sources` each time it is collected."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        machines = self._sources.machines()
        with self._sources.db() as db:
            report = status_report(machines, db, self._sources.slots, recent=0)
            history = None if db is None else _maybe_read_history(db)
        return metric_families(report, history)


def _maybe_read_history(db: StateDB) -> History | None:
    try:
        return read_history(db)
    except StateError:
        return None  # shown as nixdist_history_available 0, as `status_report` shows none


def render_metrics(sources: Sources, accept: str = "") -> tuple[bytes, str]:
    """The exposition for an HTTP ``Accept`` header: (body, content type)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(StateCollector(sources)), content_type
