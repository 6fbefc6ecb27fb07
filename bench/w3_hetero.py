"""W3, heterogeneous builders: 60 independent derivations of fixed work, speeds 1, 2 and 4.

The farm has three builders, ``s1``, ``s2`` and ``s4``, of speed factor 1, 2 and 4 (machines
field 5), `jobs` (2) slots each. Each builder's ``/etc/nix/nixdist-speed`` holds its speed
(written by the farm), and every derivation's builder script sleeps ``work_ms / speed``
milliseconds, read from there: with the default 4000 ms one derivation takes 4 s on ``s1``,
2 s on ``s2`` and 1 s on ``s4``, so a fast builder really finishes sooner. (Sleeping, not
burning CPU: this machine has 2 cores, and 6 busy loops would make every builder slow.)

Makespan = wall time of the whole ``nix-build -j0``. Its lower bound::

    capacity    = sum over builders of jobs x speed             (2 x (1 + 2 + 4) = 14)
    total work  = derivations x work_ms                          (60 x 4 s = 240 s at speed 1)
    lower bound = max(critical path, total work / capacity)      (max(1 s, 17.1 s) = 17.1 s)

where the critical path is one derivation on the fastest builder (they are independent). The
bound ignores every overhead (hooks, ssh, copies) and the granularity of whole derivations, so
no real run reaches it. Goals: nixdist-hook's makespan <= 1.1x the bound, and no worse than
build-remote's; ``nixdist build``'s (a third contender, bench/contenders.py) <= 1.1x the bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from common import Goal, Outcome, Row, fmt_ratio, med_best, median, ratio
from contenders import BUILD_REMOTE, NIXDIST, NIXDIST_BUILD, available
from farmbench import BuildRun, FarmBench, profile_dir, round_order
from w1_dag import describe_run, times_of

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from nixdist.farm import BuilderSpec

GOAL_VS_BOUND: Final = 1.1
GOAL_VS_BUILD_REMOTE: Final = 1.0
SPEEDS: Final = (1, 2, 4)
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST, NIXDIST_BUILD)

WORK_NIX: Final = r"""
{ salt, n, work_ms, system ? builtins.currentSystem }:
builtins.genList (i: derivation {
  name = "nxb-w3-${toString i}";
  inherit system salt;
  work_ms = toString work_ms;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    speed=$(cat /etc/nix/nixdist-speed 2>/dev/null || echo 1)
    where=$(cat /etc/nix/nixdist-builder 2>/dev/null || echo local)
    echo "building $name on $where (speed $speed)"
    ms=$((work_ms / speed))
    sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    echo "$name $salt $where $speed" > "$out"
  '' ];
}) n
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class W3Options:
    rounds: int = 3
    drvs: int = 60
    work_ms: int = 4000
    jobs: int = 2
    profile_dir: str | None = None  # run nixdist-hook under cProfile, see farmbench
    nix_options: tuple[str, ...] = ()  # extra nix-build arguments, e.g. --option k v
    client_nix: str | None = None  # the client's Nix (a farm client), None: the host's

    @property
    def contenders(self) -> tuple[str, ...]:
        return available(CONTENDERS, self.client_nix)


def specs_for(opts: W3Options) -> list[BuilderSpec]:
    return [make_spec(f"s{speed}", jobs=opts.jobs, speed=speed) for speed in SPEEDS]


def lower_bound(opts: W3Options, specs: Sequence[BuilderSpec]) -> dict[str, float]:
    """The makespan no schedule can beat: max(critical path, total work / capacity)."""
    capacity = sum(s.max_jobs * s.speed_factor for s in specs)
    total_work = opts.drvs * opts.work_ms / 1000
    critical = opts.work_ms / 1000 / max(s.speed_factor for s in specs)
    return {
        "capacity": capacity,
        "total_work_s": total_work,
        "critical_path_s": critical,
        "lower_bound_s": max(critical, total_work / capacity),
    }


def run(base: Path, opts: W3Options, log: Callable[[str], None]) -> Outcome:
    specs = specs_for(opts)
    bench = FarmBench(
        base,
        "w3",
        profile_dir=profile_dir(opts.profile_dir, "w3"),
        client_nix=opts.client_nix,
        specs=specs,
    )
    runs: list[BuildRun] = []
    try:
        bench.up()
        for spec in specs:  # the speed the workload will read, as the builder sees it
            seen = bench.farm.run_in(spec.name, ["cat", "/etc/nix/nixdist-speed"]).stdout
            if seen.strip() != str(spec.speed_factor).encode():
                raise RuntimeError(f"w3: builder {spec.name} reads speed {seen!r}")
        expr = bench.write_expr("work.nix", WORK_NIX)
        for rnd in range(opts.rounds):
            for contender in round_order(rnd, opts.contenders):
                drvs = bench.instantiate(
                    expr,
                    fresh_salt(f"w3-{contender}-r{rnd}"),
                    n=opts.drvs,
                    work_ms=opts.work_ms,
                )
                run_ = bench.timed_run(
                    workload="w3",
                    contender=contender,
                    rnd=rnd,
                    drvs=drvs,
                    derivations=len(drvs),
                    extra=opts.nix_options,
                )
                runs.append(run_)
                log(describe_run(run_))
    finally:
        bench.teardown()
    return outcome(opts, specs, runs)


def outcome(opts: W3Options, specs: Sequence[BuilderSpec], runs: list[BuildRun]) -> Outcome:
    bound = lower_bound(opts, specs)
    lb = bound["lower_bound_s"]
    times = times_of(runs, CONTENDERS)
    over = {c: ratio(median(t), lb) for c, t in times.items()}
    vs_br = {c: ratio(median(times[c]), median(times[BUILD_REMOTE])) for c in CONTENDERS}
    goals = (
        Goal(
            workload="W3",
            measure="makespan nixdist / lower bound",
            value=over[NIXDIST],
            target=GOAL_VS_BOUND,
        ),
        Goal(
            workload="W3",
            measure="makespan nixdist / build-remote",
            value=vs_br[NIXDIST],
            target=GOAL_VS_BUILD_REMOTE,
        ),
        Goal(
            workload="W3",
            measure="makespan nixdist build / lower bound",
            value=over[NIXDIST_BUILD],
            target=GOAL_VS_BOUND,
        ),
    )
    placements = {
        c: {
            spec.name: round(
                median([r.placements.get(spec.name, 0) for r in runs if r.contender == c]), 1
            )
            for spec in specs
        }
        for c in CONTENDERS
        if any(r.contender == c for r in runs)
    }
    data: dict[str, object] = {
        "options": asdict(opts),
        "builders": [{"name": s.name, "speed": s.speed_factor, "jobs": s.max_jobs} for s in specs],
        **bound,
        "seconds": times,
        "makespan_over_bound": over,
        "ratio_vs_build_remote": vs_br[NIXDIST],
        "ratios_vs_build_remote": vs_br,
        "placements_median": placements,
        "runs": [asdict(r) for r in runs],
    }
    rows = _rows(opts, specs, times=times, over=over, placements=placements, goals=goals)
    return Outcome(key="w3", data=data, rows=rows, goals=goals)


def _rows(
    opts: W3Options,
    specs: Sequence[BuilderSpec],
    *,
    times: Mapping[str, Sequence[float]],
    over: Mapping[str, float],
    placements: Mapping[str, dict[str, float]],
    goals: Sequence[Goal],
) -> tuple[Row, ...]:
    hook_bound, hook_br, build_bound = goals
    return (
        Row(
            workload="W3",
            measure=(
                f"{opts.drvs} drvs x {opts.work_ms / 1000:g} s/speed, speeds "
                f"{'/'.join(str(s.speed_factor) for s in specs)} x {opts.jobs} jobs: makespan s"
            ),
            build_remote=med_best(times[BUILD_REMOTE]),
            nixdist=med_best(times[NIXDIST]),
            nixdist_build=med_best(times[NIXDIST_BUILD]),
            ratio=fmt_ratio(hook_br.value),
            goal=hook_br,
        ),
        Row(
            workload="W3",
            measure="  ratio nixdist build / build-remote",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(ratio(median(times[NIXDIST_BUILD]), median(times[BUILD_REMOTE]))),
        ),
        Row(
            workload="W3",
            measure=f"  makespan / lower bound {lower_bound(opts, specs)['lower_bound_s']:.2f} s",
            build_remote=fmt_ratio(over[BUILD_REMOTE]),
            nixdist=fmt_ratio(over[NIXDIST]),
            nixdist_build=fmt_ratio(over[NIXDIST_BUILD]),
            ratio="",
            goal=hook_bound,
        ),
        Row(
            workload="W3",
            measure="  ratio nixdist build makespan / lower bound",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(build_bound.value),
            goal=build_bound,
        ),
        Row(
            workload="W3",
            measure="  drvs per builder (" + "/".join(s.name for s in specs) + "), median",
            build_remote=_placement_cell(placements.get(BUILD_REMOTE, {})),
            nixdist=_placement_cell(placements.get(NIXDIST, {})),
            nixdist_build=_placement_cell(placements.get(NIXDIST_BUILD, {})),
            ratio="",
        ),
    )


def _placement_cell(placement: dict[str, float]) -> str:
    return "/".join(f"{v:g}" for v in placement.values()) if placement else "-"
