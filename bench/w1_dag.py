"""W1, overhead-bound: a DAG of trivial derivations on 3 builders x 4 slots, ``nix-build -j0``.

The DAG has `layers` layers of `width` derivations (10 x 20 = 200 by default); each node of
layer k > 0 depends on three nodes of layer k-1 (same index, the next one, and the one half-way
round). A node's builder only checks that its inputs exist and writes one line, so the wall
time is almost all per-build overhead: starting the hook, choosing a machine, opening the ssh
session, copying the (tiny) inputs in and the output back.

Contenders (bench/contenders.py), interleaved, the order flipped every round: the two hooks;
``nixdist build --fetch-all`` (every output valid here afterwards, as the hooks leave it: the
like-for-like comparison) and ``nixdist build`` without it (here the same outputs, since the
expression lists every derivation, so all are asked for); and the local floor, ``nix-build
-j<the farm's slots>`` of the same DAG on this machine alone. Goals: nixdist-hook's median
wall time at most 0.35x build-remote's; nixdist build's (with ``--fetch-all``) at most 0.15x
build-remote's and at most 1.5x the local floor's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from common import Goal, Outcome, Row, fmt_ratio, med_best, median, ratio
from contenders import (
    BUILD_REMOTE,
    LOCAL,
    NIXDIST,
    NIXDIST_BUILD,
    NIXDIST_BUILD_ALL,
    available,
)
from farmbench import BuildRun, FarmBench, profile_dir, round_order, workload_names

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

GOAL: Final = 0.35  # nixdist-hook / build-remote
GOAL_BUILD: Final = 0.15  # nixdist build --fetch-all / build-remote
GOAL_BUILD_VS_LOCAL: Final = 1.5  # nixdist build --fetch-all / the local floor
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST, NIXDIST_BUILD_ALL, NIXDIST_BUILD, LOCAL)

DAG_NIX: Final = r"""
{ salt, width, layers, system ? builtins.currentSystem }:
let
  mod = a: b: a - (a / b) * b;
  node = l: i: deps: derivation {
    name = "nxb-w1-${toString l}-${toString i}";
    inherit system salt deps;
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" ''
      echo "building $name on $(cat /etc/nix/nixdist-builder 2>/dev/null || echo local)"
      for d in $deps; do test -e "$d"; done
      echo "$name $salt" > "$out"
    '' ];
  };
  offsets = [ 0 1 (width / 2) ];
  layer = l: prev: builtins.genList (i:
    node l i (if prev == [ ] then [ ]
              else map (k: builtins.elemAt prev (mod (i + k) width)) offsets)) width;
  # built front to back, so that each layer is evaluated once
  all = builtins.foldl' (acc: l: acc ++ [ (layer l (if acc == [ ] then [ ] else
    builtins.elemAt acc (l - 1))) ]) [ ] (builtins.genList (l: l) layers);
in builtins.concatLists all
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class W1Options:
    rounds: int = 3
    width: int = 20
    layers: int = 10
    builders: int = 3
    jobs: int = 4
    profile_dir: str | None = None  # run nixdist-hook under cProfile, see farmbench
    nix_options: tuple[str, ...] = ()  # extra nix-build arguments, e.g. --option k v
    client_nix: str | None = None  # the client's Nix (a farm client), None: the host's
    scheme: str = "ssh"  # how the machines file lists the builders: ssh or ssh-ng

    @property
    def key(self) -> str:
        return workload_names("w1", self.scheme)[0]

    @property
    def label(self) -> str:
        return workload_names("w1", self.scheme)[1]

    @property
    def contenders(self) -> tuple[str, ...]:
        return available(CONTENDERS, self.client_nix, self.scheme)


def run(base: Path, opts: W1Options, log: Callable[[str], None]) -> Outcome:
    specs = [
        make_spec(f"b{i}", jobs=opts.jobs, scheme=opts.scheme) for i in range(1, opts.builders + 1)
    ]
    bench = FarmBench(
        base,
        opts.key,
        profile_dir=profile_dir(opts.profile_dir, opts.key),
        client_nix=opts.client_nix,
        specs=specs,
    )
    runs: list[BuildRun] = []
    try:
        bench.up()
        expr = bench.write_expr("dag.nix", DAG_NIX)
        for rnd in range(opts.rounds):
            for contender in round_order(rnd, opts.contenders):
                drvs = bench.instantiate(
                    expr,
                    fresh_salt(f"{opts.key}-{contender}-r{rnd}"),
                    width=opts.width,
                    layers=opts.layers,
                )
                run_ = bench.timed_run(
                    workload=opts.key,
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
    return outcome(opts, runs)


def describe_run(run: BuildRun) -> str:
    where = " ".join(f"{k}:{v}" for k, v in run.placements.items())
    status = "ok" if run.ok else "FAILED"
    line = (
        f"  {run.workload} round {run.round + 1} {run.contender:<17} {run.seconds:8.2f} s  "
        f"{status}  built remotely {run.built_remotely}/{run.outputs}, valid locally "
        f"{run.valid_locally} (asked {run.asked_valid}/{run.asked})  [{where}]"
    )
    if not run.ok:
        line += "\n" + run.error
    return line


def times_of(runs: Sequence[BuildRun], names: Sequence[str]) -> dict[str, list[float]]:
    """The wall times of the successful runs of each of `names`."""
    return {c: [r.seconds for r in runs if r.contender == c and r.ok] for c in names}


def outcome(opts: W1Options, runs: list[BuildRun]) -> Outcome:
    times = times_of(runs, CONTENDERS)
    med = {c: median(t) for c, t in times.items()}
    count = runs[0].derivations if runs else opts.width * opts.layers
    ratios = {
        "nixdist-hook/build-remote": ratio(med[NIXDIST], med[BUILD_REMOTE]),
        "nixdist-build-all/build-remote": ratio(med[NIXDIST_BUILD_ALL], med[BUILD_REMOTE]),
        "nixdist-build-all/local": ratio(med[NIXDIST_BUILD_ALL], med[LOCAL]),
        "nixdist-build/build-remote": ratio(med[NIXDIST_BUILD], med[BUILD_REMOTE]),
        "nixdist-build/local": ratio(med[NIXDIST_BUILD], med[LOCAL]),
    }
    goals = (
        Goal(
            workload=opts.label,
            measure="wall nixdist / build-remote",
            value=ratios["nixdist-hook/build-remote"],
            target=GOAL,
        ),
        Goal(
            workload=opts.label,
            measure="wall nixdist build --fetch-all / build-remote",
            value=ratios["nixdist-build-all/build-remote"],
            target=GOAL_BUILD,
        ),
        Goal(
            workload=opts.label,
            measure="wall nixdist build --fetch-all / local nix-build"
            f" -j{opts.builders * opts.jobs}",
            value=ratios["nixdist-build-all/local"],
            target=GOAL_BUILD_VS_LOCAL,
        ),
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "derivations": count,
        "seconds": times,
        "median_s": med,
        "ratio": ratios["nixdist-hook/build-remote"],
        "ratios": ratios,
        "runs": [asdict(r) for r in runs],
    }
    return Outcome(key=opts.key, data=data, rows=_rows(opts, count, times, goals), goals=goals)


def _rows(
    opts: W1Options, count: int, times: dict[str, list[float]], goals: Sequence[Goal]
) -> tuple[Row, ...]:
    hook, build, floor = goals
    per_drv = {
        c: (f"{1000 * median(t) / count:.0f} ms/drv" if t else "-") for c, t in times.items()
    }
    slots = opts.builders * opts.jobs
    return (
        Row(
            workload=opts.label,
            measure=f"{count} trivial drvs, {opts.builders}x{opts.jobs} slots: wall s"
            " (nixdist build --fetch-all)",
            build_remote=med_best(times[BUILD_REMOTE]),
            nixdist=med_best(times[NIXDIST]),
            nixdist_build=med_best(times[NIXDIST_BUILD_ALL]),
            ratio=fmt_ratio(hook.value),
            goal=hook,
        ),
        Row(
            workload=opts.label,
            measure="  ratio nixdist build --fetch-all / build-remote",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(build.value),
            goal=build,
        ),
        Row(
            workload=opts.label,
            measure=f"  ratio nixdist build --fetch-all / local nix-build -j{slots}"
            f" {med_best(times[LOCAL])} s",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(floor.value),
            goal=floor,
        ),
        Row(
            workload=opts.label,
            measure="  nixdist build without --fetch-all: wall s; ratio / build-remote",
            build_remote="",
            nixdist="",
            nixdist_build=med_best(times[NIXDIST_BUILD]),
            ratio=fmt_ratio(ratio(median(times[NIXDIST_BUILD]), median(times[BUILD_REMOTE]))),
        ),
        Row(
            workload=opts.label,
            measure="  per derivation (nixdist build --fetch-all)",
            build_remote=per_drv[BUILD_REMOTE],
            nixdist=per_drv[NIXDIST],
            nixdist_build=per_drv[NIXDIST_BUILD_ALL],
            ratio="",
        ),
    )
