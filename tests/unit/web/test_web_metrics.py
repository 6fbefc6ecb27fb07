"""/metrics: parsed back with prometheus_client's own parsers, checked against the history the
hook's writers left and against /api/status."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from nixdist.state.db import StateDB
from nixdist.state.rows import Outcome
from nixdist.web.metrics import DURATION_BUCKETS_S, metric_families, read_history
from nixdist.web.sources import Sources

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from .conftest import Filled, Reply

    Serve = Callable[..., AbstractContextManager[str]]
    Get = Callable[..., Reply]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("nixdist_")
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(serve: Serve, get: Get, sources: Sources, **headers: str) -> Reply:
    with serve(sources) as url:
        return get(f"{url}/metrics", headers)


def test_metrics_parse_and_count_builds_by_machine_and_status(
    serve: Serve, get: Get, sources: Sources
) -> None:
    reply = scrape(serve, get, sources)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(reply.text)
    builds = {
        (dict(labels)["machine"], dict(labels)["status"]): n
        for (name, labels), n in samples.items()
        if name == "nixdist_builds_total"
    }
    # the running attempt is not counted until it ends; the dead hook's one is interrupted
    assert builds == {
        ("ssh://b1", "built"): 2,
        ("ssh://b2", "failed"): 1,
        ("ssh://b2", "lost"): 1,
        ("ssh://b2", "interrupted"): 1,
    }
    assert value(samples, "nixdist_history_available") == 1


def test_bytes_paths_and_phase_times(serve: Serve, get: Get, sources: Sources) -> None:
    samples = parse(scrape(serve, get, sources).text)

    def copied(machine: str, direction: str) -> tuple[float | None, float | None]:
        labels = {"machine": machine, "direction": direction}
        return (
            value(samples, "nixdist_copied_bytes_total", **labels),
            value(samples, "nixdist_copied_paths_total", **labels),
        )

    assert copied("ssh://b1", "upload") == (3000, 3)
    assert copied("ssh://b1", "download") == (1200, 2)
    assert copied("ssh://b2", "upload") == (10, 1)
    assert copied("ssh://b2", "download") == (0, 0)
    phase = "nixdist_phase_seconds_total"
    assert value(samples, phase, machine="ssh://b1", phase="upload") == pytest.approx(0.5)
    assert value(samples, phase, machine="ssh://b1", phase="build") == pytest.approx(3.0)
    assert value(samples, phase, machine="ssh://b1", phase="download") == pytest.approx(1.0)
    assert value(samples, phase, machine="ssh://b2", phase="build") == pytest.approx(3.0)


def test_machine_gauges(serve: Serve, get: Get, sources: Sources) -> None:
    b1 = sources.machines()[0]
    probe = sources.slots.try_slot(b1)
    assert probe.lease is not None
    with probe.lease:
        samples = parse(scrape(serve, get, sources).text)
    gauges = {
        name: {m: value(samples, name, machine=m) for m in ("ssh://b1", "ssh://b2", "ssh://b3")}
        for name in (
            "nixdist_slots_in_use",
            "nixdist_machine_max_jobs",
            "nixdist_machine_up",
            "nixdist_running_builds",
        )
    }
    assert gauges == {
        "nixdist_slots_in_use": {"ssh://b1": 1, "ssh://b2": 0, "ssh://b3": 0},
        "nixdist_machine_max_jobs": {"ssh://b1": 2, "ssh://b2": 1, "ssh://b3": 4},
        "nixdist_machine_up": {"ssh://b1": 1, "ssh://b2": 1, "ssh://b3": 0},
        "nixdist_running_builds": {"ssh://b1": 1, "ssh://b2": 0, "ssh://b3": 0},
    }


def test_duration_histogram(filled_state: Filled, sources_for: Callable[..., Sources]) -> None:
    now = time.time()
    with StateDB.open(filled_state.state) as db:
        for seconds in (3.0, 45.0, 45.0, 4000.0):
            build_id = db.start_build(
                drv_path="/nix/store/x.drv", machine="ssh://b3", attempt=1, now=now - seconds
            )
            db.update_build(build_id, status=Outcome.BUILT, finished=now, phase="done")
        history = read_history(db)
    sources = sources_for(filled_state)
    families = metric_families(sources.status(recent=0), history)
    [duration] = [f for f in families if f.name == "nixdist_build_duration_seconds"]
    b3 = {
        s.name.removeprefix("nixdist_build_duration_seconds"): (s.labels.get("le"), s.value)
        for s in duration.samples
        if s.labels["machine"] == "ssh://b3" and s.labels.get("le") in {None, "5.0", "60.0", "+Inf"}
    }
    count_le, count = b3["_count"]
    assert count_le is None
    assert count == 4
    assert b3["_sum"][1] == pytest.approx(4093.0)
    buckets = {
        s.labels["le"]: s.value
        for s in duration.samples
        if s.labels["machine"] == "ssh://b3" and s.name.endswith("_bucket")
    }
    assert list(buckets) == [*(repr(b) for b in DURATION_BUCKETS_S), "+Inf"]
    assert buckets["2.5"] == 0
    assert buckets["5.0"] == 1
    assert buckets["60.0"] == 3
    assert buckets["3600.0"] == 3
    assert buckets["7200.0"] == buckets["+Inf"] == 4
    # failed and lost attempts are not in the histogram
    assert all(s.labels["machine"] != "ssh://b2" for s in duration.samples)


def test_counts_agree_with_api_status_and_history(
    serve: Serve, get: Get, sources: Sources, filled_state: Filled
) -> None:
    with serve(sources) as url:
        samples = parse(get(f"{url}/metrics").text)
        status = json.loads(get(f"{url}/api/status").body)
    with StateDB.open(filled_state.state) as db:
        everything = db.builds()
    for machine in ("ssh://b1", "ssh://b2"):
        for state in ("built", "failed", "lost", "interrupted"):
            expected = sum(
                1 for b in everything if b.machine == machine and b.effective_status == state
            )
            shown = sum(
                1 for b in status["recent"] if b["machine"] == machine and b["status"] == state
            )
            counted = value(samples, "nixdist_builds_total", machine=machine, status=state) or 0
            assert counted == expected == shown, (machine, state)
    running = {m["uri"]: m["running_builds"] for m in status["machines"]}
    assert running == {m: value(samples, "nixdist_running_builds", machine=m) for m in running}


def test_without_a_database(serve: Serve, get: Get, filled_state: Filled) -> None:
    sources = Sources(machines=lambda: (), open_db=lambda: None, slots=filled_state.slots)
    samples = parse(scrape(serve, get, sources).text)
    assert samples == {("nixdist_history_available", frozenset()): 0}


def test_openmetrics_on_request(serve: Serve, get: Get, sources: Sources) -> None:
    reply = scrape(serve, get, sources, Accept="application/openmetrics-text; version=1.0.0")
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    families = openmetrics_families(reply.text)  # type: ignore[no-untyped-call]
    names = {family.name for family in families}
    assert {"nixdist_builds", "nixdist_build_duration_seconds", "nixdist_machine_up"} <= names


def test_each_scrape_reads_afresh(serve: Serve, get: Get, sources: Sources) -> None:
    with serve(sources) as url:
        before = parse(get(f"{url}/metrics").text)
        with sources.db() as db:
            assert db is not None
            build_id = db.start_build(drv_path="/nix/store/y.drv", machine="ssh://b1", attempt=1)
            db.update_build(build_id, status=Outcome.FAILED, finished=time.time())
        after = parse(get(f"{url}/metrics").text)
    key = ("nixdist_builds_total", frozenset({("machine", "ssh://b1"), ("status", "failed")}))
    assert key not in before
    assert after[key] == 1
