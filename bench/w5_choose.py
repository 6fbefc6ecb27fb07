"""W5, scheduler: one `nixdist.scheduler.policy.choose` call over 1000 machines, in process.

The machines are a seeded random but plausible fleet: 80 % x86_64-linux, 10 % aarch64-linux,
10 % both; 1-16 jobs; speed 1, 1, 2 or 4; each of big-parallel, kvm, nixos-test with
probability 1/3, a mandatory ``benchmark`` feature on 2 %. Their states: load 0..jobs slots
held (a free slot when below jobs), 3 % down, half with a remote load report. The request is
an x86_64-linux build that needs big-parallel, Nix not willing to build locally (``-j0``), so
about a quarter of the machines are candidates. The decision's reasons (a worded rejection
per machine) are built only when read, after the hook has replied; their cost is reported
beside the goal as ``median_ms_with_reasons``.

Timed with `timeit`: the number of calls per sample from ``autorange`` (at least 0.2 s), then
`repeat` samples; per call = sample / number. Median and best are reported. Build-remote has
no separate chooser to compare with (its choice is inline in ``build-remote.cc``). Goal: median
<= 1 ms per call.
"""

from __future__ import annotations

import random
import statistics
import timeit
from dataclasses import asdict, dataclass
from typing import Final

from common import Goal, Outcome, Row

from nixdist.model.machines import Machine
from nixdist.model.request import BuildRequest
from nixdist.scheduler.policy import (
    Accept,
    LocalCapabilities,
    MachineState,
    RemoteLoad,
    choose,
)

GOAL_MS: Final = 1.0
FEATURES: Final = ("big-parallel", "kvm", "nixos-test")


@dataclass(frozen=True, slots=True, kw_only=True)
class W5Options:
    machines: int = 1000
    repeat: int = 15
    seed: int = 5


def fleet(count: int, seed: int) -> list[MachineState]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible fleet, not a secret
    states = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.8:
            systems: tuple[str, ...] = ("x86_64-linux",)
        elif roll < 0.9:
            systems = ("aarch64-linux",)
        else:
            systems = ("x86_64-linux", "aarch64-linux")
        jobs = rng.randint(1, 16)
        load = rng.randint(0, jobs)
        machine = Machine(
            uri=f"ssh://builder-{i:04}.example.org",
            systems=systems,
            ssh_key="/etc/nix/builder_ed25519",
            max_jobs=jobs,
            speed_factor=float(rng.choice((1, 1, 2, 4))),
            supported_features=frozenset(f for f in FEATURES if rng.random() < 1 / 3),
            mandatory_features=frozenset({"benchmark"}) if rng.random() < 0.02 else frozenset(),
            source=f"/etc/nix/machines:{i + 1}",
        )
        states.append(
            MachineState(
                machine=machine,
                load=load,
                free_slot=load < jobs,
                down_reason="connection refused" if rng.random() < 0.03 else None,
                remote_load=RemoteLoad(other_builds=rng.randint(0, jobs))
                if rng.random() < 0.5
                else None,
            )
        )
    return states


def run(opts: W5Options) -> Outcome:
    states = fleet(opts.machines, opts.seed)
    request = BuildRequest(
        drv_path="/nix/store/00000000000000000000000000000000-nxb-w5.drv",
        system="x86_64-linux",
        required_features=frozenset({"big-parallel"}),
        am_willing=False,
    )
    local = LocalCapabilities(system="x86_64-linux", max_jobs=0)
    schemes = frozenset({"ssh"})
    decision = choose(request, local, states, supported_schemes=schemes)

    def call() -> None:
        choose(request, local, states, supported_schemes=schemes)

    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    number = max(number, 1)
    per_call_ms = [1000 * t / number for t in timer.repeat(repeat=opts.repeat, number=number)]
    med = statistics.median(per_call_ms)
    # The reasons are worded only when read (the hook reads them after replying to Nix, for
    # its history): what a decision costs with every rejection put into words, for the record.
    worded = timeit.Timer(lambda: choose(request, local, states, supported_schemes=schemes).reasons)
    worded_ms = statistics.median(
        1000 * t / number for t in worded.repeat(repeat=opts.repeat, number=number)
    )
    goal = Goal(
        workload="W5",
        measure=f"choose() over {opts.machines} machines, median ms per call",
        value=med,
        target=GOAL_MS,
        unit="ms",
    )
    row = Row(
        workload="W5",
        measure=f"choose() over {opts.machines} machines: ms per call",
        build_remote="-",
        nixdist=f"{med:.3f} [{min(per_call_ms):.3f}]",
        ratio="",
        goal=goal,
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "calls_per_sample": number,
        "ms_per_call": per_call_ms,
        "median_ms": med,
        "best_ms": min(per_call_ms),
        "median_ms_with_reasons": worded_ms,
        "decision": type(decision).__name__,
        "chosen": decision.machine.uri if isinstance(decision, Accept) else None,
        "candidates": sum(1 for r in decision.reasons if r.matches)
        + (1 if isinstance(decision, Accept) else 0),
    }
    return Outcome(key="w5", data=data, rows=(row,), goals=(goal,))
