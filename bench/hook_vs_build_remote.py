"""Benchmark: nixdist-hook against Nix 2.8's own build-remote, on the same farm, in one run.

One `farmbench.FarmBench` (a local farm, by default 3 builders x 2 jobs, each a real sshd with
its own Nix store, in a temporary directory under a unique alias prefix) builds every workload
the way farmbench describes, through each contender's hook:

    build-remote   stock Nix: one new ssh connection per build
    nixdist-cold   nixdist with a fresh NIXDIST_STATE_DIR: no ssh control master yet
    nixdist-warm   nixdist again with that state directory: its control masters are alive
                   (the steady state: masters outlive hook processes, by design)

Workloads (the same shape for every contender, fresh salts per run so nothing is valid yet
anywhere; derivations are instantiated before the clock starts, so only building is timed):

    dag      tests/fixtures/dag.nix: 51 tiny derivations, 10 wide x 5 deep + a top  (wall time)
    chain    N tiny derivations, each needing the previous one       (wall time / N: latency)
    wide     N independent tiny derivations                          (wall time / N: throughput)
    big-in   one derivation whose input is a ~150 MB tree added with nix-store --add (MB/s up)
    big-out  one derivation writing a ~150 MB output on the builder                  (MB/s down)

Rounds interleave the contenders (build-remote first in even rounds, last in odd ones; cold
always before warm) to be fair on a noisy machine; best and median are reported, with ratio =
nixdist / build-remote (< 1: nixdist is faster). The masters of a workload's nixdist runs are
stopped before the next workload. After every run the stores are read (`FarmBench.check`: every
output valid locally and built by one builder) and the run's paths deleted (`FarmBench.forget`).
Nothing fails on time: this is a measurement; the exit status is 1 when a build failed or an
output was not built remotely. Results also go to bench/results/<timestamp>.json.

Everything it creates is removed at the end, also on Ctrl-C (`FarmBench.teardown`).

    .venv/bin/python bench/hook_vs_build_remote.py [--rounds 3] [--quick] [--only dag,chain]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from common import (
    FIXTURES,
    RESULTS_DIR,
    fmt_ratio,
    fmt_s,
    interrupt_on_sigterm,
    machine_info,
    missing_tools,
    ratio,
    render_table,
    summary,
    timestamp,
    write_json,
)
from contenders import NIXDIST_COLD, NIXDIST_WARM
from farmbench import BuildRun, FarmBench, run_problems, words
from w1_dag import describe_run

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

BUILD_REMOTE: Final = "build-remote"
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST_COLD, NIXDIST_WARM)
WORKLOADS: Final = ("dag", "chain", "wide", "big-in", "big-out")
MB: Final = 1_000_000

CHAIN_NIX: Final = """
{ salt, n, system ? builtins.currentSystem }:
let
  step = i: prev: derivation {
    name = "nxb-chain-${toString i}";
    inherit system salt;
    deps = if prev == null then [ ] else [ prev ];
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" ''
      for d in $deps; do test -e "$d"; done
      echo "$name $salt" > "$out"
    '' ];
  };
in builtins.foldl' (prev: i: step i prev) (step 1 null) (builtins.genList (i: i + 2) (n - 1))
"""
WIDE_NIX: Final = """
{ salt, n, system ? builtins.currentSystem }:
builtins.genList (i: derivation {
  name = "nxb-wide-${toString i}";
  inherit system salt;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    echo "$name $salt" > "$out"
  '' ];
}) n
"""
BIG_IN_NIX: Final = """
{ salt, src, system ? builtins.currentSystem }:
derivation {
  name = "nxb-big-in";
  inherit system salt;
  src = builtins.storePath src;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    echo "$(find "$src" -type f | wc -l) files $salt" > "$out"
  '' ];
}
"""
BIG_OUT_NIX: Final = """
{ salt, bytes, system ? builtins.currentSystem }:
derivation {
  name = "nxb-big-out";
  inherit system salt bytes;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    mkdir "$out"
    echo "$salt" > "$out/salt"
    head -c "$bytes" /dev/urandom > "$out/blob"
  '' ];
}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    rounds: int
    builders: int
    jobs: int
    chain: int
    wide: int
    big_mb: int
    workloads: tuple[str, ...]
    contenders: tuple[str, ...]
    json_path: Path
    verbose: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    what: str
    payload_bytes: int  # bytes that must cross the wire (big-in / big-out), else 0
    prepare: Callable[[str], tuple[str, ...]]  # salt -> its derivations, instantiated


def parse_options(argv: Sequence[str] | None = None) -> Options:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument("--builders", type=int, default=3, help="farm builders (default 3)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs per builder (default 2)")
    parser.add_argument("--chain", type=int, default=20, help="length of the chain (20)")
    parser.add_argument("--wide", type=int, default=30, help="derivations in 'wide' (30)")
    parser.add_argument("--big-mb", type=int, default=150, help="MB for big-in/out (150)")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"workloads, comma-separated: {WORKLOADS}"
    )
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help=f"comma-separated: {CONTENDERS}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, smaller workloads (a smoke run)"
    )
    parser.add_argument("--json", type=Path, help="result file (bench/results/<timestamp>.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    opts = parser.parse_args(argv)
    workloads = tuple(w for w in opts.only.split(",") if w)
    contenders = tuple(c for c in opts.contenders.split(",") if c)
    for name, chosen, known in (
        ("workload", workloads, WORKLOADS),
        ("contender", contenders, CONTENDERS),
    ):
        if unknown := sorted(set(chosen) - set(known)):
            parser.error(f"unknown {name}(s): {', '.join(unknown)}")
    if NIXDIST_WARM in contenders and NIXDIST_COLD not in contenders:
        parser.error("nixdist-warm needs nixdist-cold (the cold run starts the masters)")
    quick = opts.quick
    return Options(
        rounds=1 if quick else opts.rounds,
        builders=opts.builders,
        jobs=opts.jobs,
        chain=min(opts.chain, 8) if quick else opts.chain,
        wide=min(opts.wide, 12) if quick else opts.wide,
        big_mb=min(opts.big_mb, 30) if quick else opts.big_mb,
        workloads=workloads,
        contenders=contenders,
        json_path=opts.json or RESULTS_DIR / f"{timestamp()}.json",
        verbose=opts.verbose,
    )


def farm_bench(opts: Options, base: Path) -> FarmBench:
    specs = [make_spec(f"b{i}", jobs=opts.jobs) for i in range(1, opts.builders + 1)]
    return FarmBench(base, "hooks", specs=specs)


def workloads(bench: FarmBench, opts: Options) -> list[Workload]:
    """The chosen workloads, their expressions written (call after `FarmBench.up`)."""
    big = opts.big_mb * MB
    chain = bench.write_expr("chain.nix", CHAIN_NIX)
    wide = bench.write_expr("wide.nix", WIDE_NIX)
    big_in = bench.write_expr("big-in.nix", BIG_IN_NIX)
    big_out = bench.write_expr("big-out.nix", BIG_OUT_NIX)
    tree = bench.base / "nxb-big-input"
    if "big-in" in opts.workloads:
        make_tree(tree, big)

    def prepare_big_in(salt: str) -> tuple[str, ...]:
        # a new salt file makes a new store path: no builder has this input yet
        (tree / "salt").write_text(salt)
        [src] = words(bench.run_nix(["nix-store", "--add", str(tree)]), "nix-store --add")
        bench.created.add(src)
        return bench.instantiate(big_in, salt, src=src)

    every = (
        Workload(
            name="dag",
            what="tests/fixtures/dag.nix (10 x 5 + top)",
            payload_bytes=0,
            prepare=lambda salt: bench.instantiate(FIXTURES / "dag.nix", salt),
        ),
        Workload(
            name="chain",
            what=f"{opts.chain} tiny derivations in a chain",
            payload_bytes=0,
            prepare=lambda salt: bench.instantiate(chain, salt, n=opts.chain),
        ),
        Workload(
            name="wide",
            what=f"{opts.wide} independent tiny derivations",
            payload_bytes=0,
            prepare=lambda salt: bench.instantiate(wide, salt, n=opts.wide),
        ),
        Workload(
            name="big-in",
            what=f"1 derivation, {opts.big_mb} MB input tree",
            payload_bytes=big,
            prepare=prepare_big_in,
        ),
        Workload(
            name="big-out",
            what=f"1 derivation, {opts.big_mb} MB output",
            payload_bytes=big,
            prepare=lambda salt: bench.instantiate(big_out, salt, bytes=big),
        ),
    )
    return [w for w in every if w.name in opts.workloads]


def make_tree(root: Path, size: int) -> None:
    """~`size` bytes of incompressible data: 3/4 in a few big files, the rest in small ones."""
    root.mkdir()
    big = size * 3 // 4
    chunk = os.urandom(1 << 20)
    for i in range(5):
        with (root / f"blob{i}.bin").open("wb") as out:
            left = big // 5
            while left > 0:
                # a different prefix per MiB keeps the data from repeating exactly
                piece = os.urandom(16) + chunk[16 : min(left, len(chunk))]
                out.write(piece[:left])
                left -= len(piece)
    small_dir = root / "lib"
    small_dir.mkdir()
    small = size - big
    count = 500
    for i in range(count):
        (small_dir / f"f{i:03}").write_bytes(os.urandom(small // count))


def round_order(rnd: int, contenders: Sequence[str]) -> list[str]:
    """build-remote first in even rounds, last in odd ones; nixdist's cold run always before
    its warm one (which reuses the cold run's state directory)."""
    nixdist = [c for c in CONTENDERS if c in contenders and c != BUILD_REMOTE]
    theirs = [BUILD_REMOTE] if BUILD_REMOTE in contenders else []
    return theirs + nixdist if rnd % 2 == 0 else nixdist + theirs


def run_round(
    bench: FarmBench, opts: Options, rnd: int, chosen: Sequence[Workload]
) -> Iterator[BuildRun]:
    for workload in chosen:
        for contender in round_order(rnd, opts.contenders):
            drvs = workload.prepare(fresh_salt(f"{workload.name}-{contender}-r{rnd}"))
            yield bench.timed_run(
                workload=workload.name,
                contender=contender,
                rnd=rnd,
                drvs=drvs,
                derivations=sum(1 for p in bench.closure(drvs) if p.endswith(".drv")),
            )
        bench.stop_masters()  # the next workload's nixdist-cold starts without them


def run_all(
    bench: FarmBench, opts: Options, chosen: Sequence[Workload], runs: list[BuildRun]
) -> None:
    """Every round, appending to `runs` as they finish (so an interrupt keeps them)."""
    for rnd in range(opts.rounds):
        for run in run_round(bench, opts, rnd, chosen):
            runs.append(run)
            if opts.verbose or not run.ok:
                print(describe_run(run), flush=True)
        print(f"round {rnd + 1}/{opts.rounds} done", flush=True)


def report(
    opts: Options, chosen: Sequence[Workload], runs: Sequence[BuildRun]
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for workload in chosen:
        mine = [r for r in runs if r.workload == workload.name]
        if not mine:
            continue
        row: dict[str, object] = {
            "workload": workload.name,
            "derivations": mine[0].derivations,
            "payload_bytes": workload.payload_bytes,
        }
        for contender in opts.contenders:
            times = [r.seconds for r in mine if r.contender == contender and r.ok]
            failed = sum(1 for r in mine if r.contender == contender and not r.ok)
            row[contender] = {**summary(times), "failed": failed}
        base = row.get(BUILD_REMOTE)
        for contender in (NIXDIST_COLD, NIXDIST_WARM):
            ours = row.get(contender)
            if isinstance(base, dict) and isinstance(ours, dict):
                row[f"ratio_{contender}"] = {
                    "median": ratio(ours["median"], base["median"]),
                    "best": ratio(ours["best"], base["best"]),
                }
        rows.append(row)
    return rows


def _stat(row: Mapping[str, object], contender: str, key: str) -> float:
    value = row.get(contender)
    if isinstance(value, dict):
        number = value.get(key)
        if isinstance(number, float | int):
            return float(number)
    return float("nan")


def print_tables(opts: Options, rows: Sequence[Mapping[str, object]]) -> None:
    """Wall times with ratios, then `print_derived`."""
    with_ratio = BUILD_REMOTE in opts.contenders
    headers = ["workload", "drvs"]
    for contender in opts.contenders:
        headers.append(f"{contender} med [best] s")
        if contender != BUILD_REMOTE and with_ratio:
            headers.append("ratio med [best]")
    table = []
    for row in rows:
        cells = [str(row["workload"]), str(row["derivations"])]
        for contender in opts.contenders:
            med = _stat(row, contender, "median")
            best = _stat(row, contender, "best")
            failed = _stat(row, contender, "failed")
            cell = f"{fmt_s(med)} [{fmt_s(best)}]"
            if failed:
                cell += f" ({int(failed)} failed)"
            cells.append(cell)
            if contender != BUILD_REMOTE and with_ratio:
                r_med = ratio(med, _stat(row, BUILD_REMOTE, "median"))
                r_best = ratio(best, _stat(row, BUILD_REMOTE, "best"))
                cells.append(f"{fmt_ratio(r_med)} [{fmt_ratio(r_best)}]")
        table.append(cells)
    print()
    print(
        f"wall time of nix-build, {opts.rounds} round(s); ratio = nixdist / build-remote"
        " (< 1: nixdist faster)"
    )
    print(render_table(headers, table))
    print_derived(opts, rows)


def print_derived(opts: Options, rows: Sequence[Mapping[str, object]]) -> None:
    """Per-derivation time, or throughput for the workloads that move a payload."""
    chain = next((row for row in rows if row["workload"] == "chain"), None)
    derived = []
    for row in rows:
        count = int(str(row["derivations"]))
        payload = int(str(row["payload_bytes"]))
        cells = [str(row["workload"])]
        for contender in opts.contenders:
            med = _stat(row, contender, "median")
            if math.isnan(med):
                cells.append("-")
            elif not payload:
                cells.append(f"{1000 * med / count:.0f} ms/drv")
            else:
                cell = f"{payload / MB / med:.0f} MB/s"
                if chain is not None:
                    # take away what one tiny derivation costs this contender end to end
                    latency = _stat(chain, contender, "median") / int(str(chain["derivations"]))
                    if med > latency:
                        cell += f" ({payload / MB / (med - latency):.0f} net)"
                cells.append(cell)
        derived.append(cells)
    print()
    print(
        "per derivation: median wall / derivations; throughput: payload MB / median wall"
        " (net: minus the contender's per-derivation time in 'chain')"
    )
    print(render_table(["workload", *opts.contenders], derived))


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    if missing := missing_tools():
        print(f"missing: {', '.join(missing)}")
        return 2
    interrupt_on_sigterm()
    info = machine_info()
    base = Path(tempfile.mkdtemp(prefix="nxb-"))
    bench = farm_bench(opts, base)
    chosen: list[Workload] = []
    runs: list[BuildRun] = []
    interrupted = False
    try:
        print(f"farm: {opts.builders} builders x {opts.jobs} jobs in {base} ...", flush=True)
        bench.up()
        chosen = workloads(bench, opts)
        run_all(bench, opts, chosen, runs)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", flush=True)
    finally:
        bench.teardown()
        shutil.rmtree(base, ignore_errors=True)
    rows = report(opts, chosen, runs)
    if rows:
        print_tables(opts, rows)
    problems = [
        f"{w.name}: {problem}"
        for w in chosen
        for problem in run_problems(asdict(r) for r in runs if r.workload == w.name)
    ]
    options = {k: v for k, v in asdict(opts).items() if k != "json_path"}
    path = write_json(
        opts.json_path,
        {
            "benchmark": "hook_vs_build_remote",
            "machine": info,
            "options": options,
            "interrupted": interrupted,
            "failures": problems,
            "summary": rows,
            "runs": [asdict(r) for r in runs],
        },
    )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    return 0 if runs and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
