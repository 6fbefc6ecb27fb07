"""W1, overhead-bound: a DAG of trivial derivations on 3 builders x 4 slots, ``nix-build -j0``.

The DAG has `layers` layers of `width` derivations (10 x 20 = 200 by default); each node of
layer k > 0 depends on three nodes of layer k-1 (same index, the next one, and the one half-way
round). A node's builder only checks that its inputs exist and writes one line, so the wall
time is almost all per-build overhead: starting the hook, choosing a machine, opening the ssh
session, copying the (tiny) inputs in and the output back. Goal: nixdist's median wall time at
most 0.35x build-remote's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from common import Goal, Outcome, Row, fmt_ratio, med_best, median, ratio
from farmbench import CONTENDERS, BuildRun, FarmBench, profile_dir, round_order, workload_names

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

GOAL: Final = 0.35

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
            for contender in round_order(rnd):
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
        f"  {run.workload} round {run.round + 1} {run.contender:<12} {run.seconds:8.2f} s  "
        f"{status}  built remotely {run.built_remotely}/{run.outputs}  [{where}]"
    )
    if not run.ok:
        line += "\n" + run.error
    return line


def outcome(opts: W1Options, runs: list[BuildRun]) -> Outcome:
    times = {c: [r.seconds for r in runs if r.contender == c and r.ok] for c in CONTENDERS}
    theirs, ours = median(times["build-remote"]), median(times["nixdist"])
    value = ratio(ours, theirs)
    count = runs[0].derivations if runs else opts.width * opts.layers
    goal = Goal(
        workload=opts.label, measure="wall nixdist / build-remote", value=value, target=GOAL
    )
    per_drv = {
        c: (f"{1000 * median(t) / count:.0f} ms/drv" if t else "-") for c, t in times.items()
    }
    rows = (
        Row(
            workload=opts.label,
            measure=f"{count} trivial drvs, {opts.builders}x{opts.jobs} slots: wall s",
            build_remote=med_best(times["build-remote"]),
            nixdist=med_best(times["nixdist"]),
            ratio=fmt_ratio(value),
            goal=goal,
        ),
        Row(
            workload=opts.label,
            measure="  per derivation",
            build_remote=per_drv["build-remote"],
            nixdist=per_drv["nixdist"],
            ratio="",
        ),
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "derivations": count,
        "seconds": times,
        "median_s": {"build-remote": theirs, "nixdist": ours},
        "ratio": value,
        "runs": [asdict(r) for r in runs],
    }
    return Outcome(key=opts.key, data=data, rows=rows, goals=(goal,))
