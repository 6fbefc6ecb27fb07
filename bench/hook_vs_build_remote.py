"""Benchmark: nixdist-hook against Nix 2.8's own build-remote, on the same farm, in one run.

A local farm (`nixdist.farm.Farm`: by default 3 builders x 2 jobs, each a real sshd with its own
Nix store) is brought up in a temporary directory under a unique alias prefix. Every workload is
then built with::

    NIX_SSHOPTS="-F <farm>/ssh_config" nix-build <drvs> --no-out-link -j0 \\
        --option substituters '' --builders @<farm>/machines --option build-hook <hook>

where <hook> is ``/usr/libexec/nix/build-remote`` or the venv's ``nixdist-hook``. Contenders:

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

Rounds interleave the contenders (the order flips every round) to be fair on a noisy machine;
best and median are reported, with ratio = nixdist / build-remote (< 1: nixdist is faster).
Nothing fails on time: this is a measurement. Results also go to bench/results/<timestamp>.json.

Everything it creates is removed at the end, also on Ctrl-C: the farm (stopped, directory
deleted), the ssh control masters, the store paths of every run (``nix-store --delete``, locally
and on the builders), the slot-lock files of its builders in Nix's current-load directory.

    .venv/bin/python bench/hook_vs_build_remote.py [--rounds 3] [--quick] [--only dag,chain]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from common import (
    BUILD_REMOTE,
    FIXTURES,
    NIXDIST_HOOK,
    RESULTS_DIR,
    fmt_ratio,
    fmt_s,
    machine_info,
    ratio,
    render_table,
    summary,
    timestamp,
    write_json,
)

from nixdist.farm import Farm, make_spec
from nixdist.farm.builds import nix_build_argv
from nixdist.state.paths import ssh_dir
from nixdist.state.slots import default_current_load_dir, escape_uri
from nixdist.transport.openssh import ControlMasters, target_for_machine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from types import FrameType

# A guard against a hang, never a performance limit.
HANG_GUARD_S: Final = 1800
CONTENDERS: Final = ("build-remote", "nixdist-cold", "nixdist-warm")
WORKLOADS: Final = ("dag", "chain", "wide", "big-in", "big-out")
MB: Final = 1_000_000

# Every derivation logs where it was built, so placements can be counted from nix-build's log.
_WHERE: Final = r"""
    echo "building $name on $(cat /etc/nix/nixdist-builder 2>/dev/null || echo local)"
"""


def _with_where(text: str) -> str:
    return text.replace("@WHERE@", _WHERE)


CHAIN_NIX: Final = _with_where(
    """
{ salt, n, system ? builtins.currentSystem }:
let
  step = i: prev: derivation {
    name = "nxb-chain-${toString i}";
    inherit system salt;
    deps = if prev == null then [ ] else [ prev ];
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" ''@WHERE@
      for d in $deps; do test -e "$d"; done
      echo "$name $salt" > "$out"
    '' ];
  };
in builtins.foldl' (prev: i: step i prev) (step 1 null) (builtins.genList (i: i + 2) (n - 1))
"""
)
WIDE_NIX: Final = _with_where(
    """
{ salt, n, system ? builtins.currentSystem }:
builtins.genList (i: derivation {
  name = "nxb-wide-${toString i}";
  inherit system salt;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''@WHERE@
    echo "$name $salt" > "$out"
  '' ];
}) n
"""
)
BIG_IN_NIX: Final = _with_where(
    """
{ salt, src, system ? builtins.currentSystem }:
derivation {
  name = "nxb-big-in";
  inherit system salt;
  src = builtins.storePath src;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''@WHERE@
    echo "$(find "$src" -type f | wc -l) files $salt" > "$out"
  '' ];
}
"""
)
BIG_OUT_NIX: Final = _with_where(
    """
{ salt, bytes, system ? builtins.currentSystem }:
derivation {
  name = "nxb-big-out";
  inherit system salt bytes;
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''@WHERE@
    mkdir "$out"
    echo "$salt" > "$out/salt"
    head -c "$bytes" /dev/urandom > "$out/blob"
  '' ];
}
"""
)
# "building <name> on <builder>", from the derivations' own logs (not Nix's quoted lines)
_PLACEMENT_RE: Final = re.compile(r"^building ([^'\s]+) on ([^'\s]+)$", re.MULTILINE)


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
class Prepared:
    """One run's derivations, instantiated (untimed)."""

    drvs: tuple[str, ...]
    count: int  # derivations that will be built
    payload_bytes: int  # bytes that must cross the wire (big-in / big-out), else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    what: str
    prepare: Callable[[str], Prepared]


@dataclass(slots=True, kw_only=True)
class Run:
    workload: str
    contender: str
    round: int
    ok: bool
    seconds: float
    count: int
    payload_bytes: int
    placements: dict[str, int] = field(default_factory=dict)
    error: str = ""


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
    if "nixdist-warm" in contenders and "nixdist-cold" not in contenders:
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


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


def _run(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=HANG_GUARD_S, env=env
    )


def _lines(result: subprocess.CompletedProcess[str], what: str) -> list[str]:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout.split()


class Bench:
    """The farm, the generated files, and every store path the runs made."""

    def __init__(self, opts: Options, base: Path) -> None:
        self.opts = opts
        self.base = base
        self.farm = Farm(base / "farm", alias_prefix=f"nxb{os.getpid()}-")
        self.created: set[str] = set()  # local store paths to delete at the end
        self.state_dirs: list[Path] = []
        self._salts = itertools.count()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.pop("NIX_REMOTE_SYSTEMS", None)
        self.env = env
        self.big_tree = base / "nxb-big-input"
        self.exprs = base / "exprs"

    # ------------------------------------------------------------------ set-up

    def up(self) -> None:
        specs = [make_spec(f"b{i}", jobs=self.opts.jobs) for i in range(1, self.opts.builders + 1)]
        self.farm.up(specs)
        self.env.update(self.farm.env())
        self.exprs.mkdir()
        for name, text in (
            ("chain.nix", CHAIN_NIX),
            ("wide.nix", WIDE_NIX),
            ("big-in.nix", BIG_IN_NIX),
            ("big-out.nix", BIG_OUT_NIX),
        ):
            (self.exprs / name).write_text(text)
        if "big-in" in self.opts.workloads:
            _make_tree(self.big_tree, self.opts.big_mb * MB)

    def workloads(self) -> list[Workload]:
        o = self.opts
        every = {
            "dag": Workload(
                name="dag",
                what="tests/fixtures/dag.nix (10 x 5 + top)",
                prepare=lambda salt: self._instantiate(FIXTURES / "dag.nix", salt),
            ),
            "chain": Workload(
                name="chain",
                what=f"{o.chain} tiny derivations in a chain",
                prepare=lambda salt: self._instantiate(
                    self.exprs / "chain.nix", salt, n=str(o.chain)
                ),
            ),
            "wide": Workload(
                name="wide",
                what=f"{o.wide} independent tiny derivations",
                prepare=lambda salt: self._instantiate(
                    self.exprs / "wide.nix", salt, n=str(o.wide)
                ),
            ),
            "big-in": Workload(
                name="big-in",
                what=f"1 derivation, {o.big_mb} MB input tree",
                prepare=self._prepare_big_in,
            ),
            "big-out": Workload(
                name="big-out",
                what=f"1 derivation, {o.big_mb} MB output",
                prepare=lambda salt: self._instantiate(
                    self.exprs / "big-out.nix",
                    salt,
                    payload=o.big_mb * MB,
                    bytes=str(o.big_mb * MB),
                ),
            ),
        }
        return [every[name] for name in o.workloads]

    def salt(self, tag: str) -> str:
        return f"{tag}-{os.getpid()}-{time.time_ns()}-{next(self._salts)}"

    def _instantiate(self, expr: Path, salt: str, *, payload: int = 0, **args: str) -> Prepared:
        argv = ["nix-instantiate", str(expr), "--argstr", "salt", salt]
        for name, value in args.items():
            argv += ["--arg", name, value] if value.isdigit() else ["--argstr", name, value]
        drvs = tuple(_lines(_run(argv, env=self.env), "nix-instantiate"))
        self.created.update(drvs)
        # every derivation in the closure is ours (no nixpkgs), so count them all
        closure = _lines(_run(["nix-store", "-qR", *drvs]), "nix-store -qR")
        count = sum(1 for path in closure if path.endswith(".drv"))
        return Prepared(drvs=drvs, count=count, payload_bytes=payload)

    def _prepare_big_in(self, salt: str) -> Prepared:
        # a new salt file makes a new store path: no builder has this input yet
        (self.big_tree / "salt").write_text(salt)
        [src] = _lines(_run(["nix-store", "--add", str(self.big_tree)]), "nix-store --add")
        self.created.add(src)
        prepared = self._instantiate(
            self.exprs / "big-in.nix", salt, payload=self.opts.big_mb * MB, src=src
        )
        return Prepared(drvs=prepared.drvs, count=1, payload_bytes=prepared.payload_bytes)

    # ------------------------------------------------------------------ runs

    def build(
        self, drvs: Sequence[str], hook: Path, extra_env: Mapping[str, str]
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        argv = nix_build_argv(drvs, builders=f"@{self.farm.machines_file}", hook=hook)
        env = {**self.env, **extra_env}
        start = time.perf_counter()
        result = _run(argv, env=env)
        return time.perf_counter() - start, result

    def new_state_dir(self) -> Path:
        path = self.base / f"s{len(self.state_dirs)}"
        self.state_dirs.append(path)
        return path

    def stop_masters(self, state: Path) -> None:
        masters = ControlMasters(ssh_dir(state))
        for machine in self.farm.machines():
            target = target_for_machine(machine, self.env)
            masters.stop_master(target)
            sock = masters.socket_path(target)
            if not sock.is_relative_to(state):  # the short-path fallback under /tmp
                shutil.rmtree(sock.parent, ignore_errors=True)

    def forget(self, drvs: Sequence[str]) -> None:
        """Delete a run's paths locally and on the builders (untimed; keeps disks small)."""
        paths = self._expand(drvs)
        for name in self.farm.names():
            there = sorted(paths & set(self.farm.builder_store_paths(name)))
            if there:
                self.farm.run_in(name, ["nix-store", "--delete", *there], check=False)
        self._delete_local(paths)

    def _expand(self, roots: Iterable[str]) -> set[str]:
        """`roots` (derivations and sources of ours), their closures and every output."""
        valid = _valid(roots)
        if not valid:
            return set()
        closure = _lines(_run(["nix-store", "-qR", *valid]), "nix-store -qR")
        drvs = [p for p in closure if p.endswith(".drv")]
        outputs = _lines(_run(["nix-store", "-q", "--outputs", *drvs]), "nix-store -q --outputs")
        return set(closure) | set(outputs)

    def _delete_local(self, paths: set[str]) -> None:
        local = _valid(paths)
        if local:
            result = _run(["nix-store", "--delete", *local])
            if result.returncode != 0:
                print(
                    f"warning: could not delete {len(local)} store paths: "
                    f"{result.stderr.strip()[-500:]}"
                )
                return
        self.created.difference_update(paths)

    def teardown(self) -> None:
        for state in self.state_dirs:
            with contextlib.suppress(Exception):
                self.stop_masters(state)
        with contextlib.suppress(Exception):
            aliases = [self.farm.alias(name) for name in self.farm.names()]
            current_load = default_current_load_dir(environ=self.env)
            for alias in aliases:
                for lock in current_load.glob(f"{escape_uri('ssh://' + alias)}[-.]*"):
                    lock.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            self.farm.down()
        with contextlib.suppress(Exception):
            self._delete_local(self._expand(self.created))


def _valid(paths: Iterable[str]) -> list[str]:
    wanted = sorted(paths)
    if not wanted:
        return []
    result = _run(["nix-store", "--check-validity", "--print-invalid", *wanted])
    invalid = set(result.stdout.split())
    return [p for p in wanted if p not in invalid]


def _make_tree(root: Path, size: int) -> None:
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


def run_round(bench: Bench, rnd: int, workloads: Sequence[Workload]) -> Iterator[Run]:
    order = list(bench.opts.contenders)
    if rnd % 2 == 1:  # flip the order; warm must still follow cold
        order = [c for c in order if c != "build-remote"] + (
            ["build-remote"] if "build-remote" in order else []
        )
    else:
        order = (["build-remote"] if "build-remote" in order else []) + [
            c for c in order if c != "build-remote"
        ]
    for workload in workloads:
        state: Path | None = None
        for contender in order:
            prepared = workload.prepare(bench.salt(f"{workload.name}-{contender}-r{rnd}"))
            if contender == "build-remote":
                hook, extra = BUILD_REMOTE, {}
            else:
                if contender == "nixdist-cold" or state is None:
                    state = bench.new_state_dir()
                hook, extra = NIXDIST_HOOK, {"NIXDIST_STATE_DIR": str(state)}
            seconds, result = bench.build(prepared.drvs, hook, extra)
            placements = collections.Counter(m[2] for m in _PLACEMENT_RE.finditer(result.stderr))
            run = Run(
                workload=workload.name,
                contender=contender,
                round=rnd,
                ok=result.returncode == 0,
                seconds=seconds,
                count=prepared.count,
                payload_bytes=prepared.payload_bytes,
                placements=dict(sorted(placements.items())),
                error="" if result.returncode == 0 else result.stderr[-3000:],
            )
            bench.forget(prepared.drvs)
            yield run
        if state is not None:
            bench.stop_masters(state)


def report(opts: Options, runs: Sequence[Run]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for workload in opts.workloads:
        row: dict[str, object] = {"workload": workload}
        mine = [r for r in runs if r.workload == workload]
        if not mine:
            continue
        row["derivations"] = mine[0].count
        row["payload_bytes"] = mine[0].payload_bytes
        for contender in opts.contenders:
            times = [r.seconds for r in mine if r.contender == contender and r.ok]
            failed = sum(1 for r in mine if r.contender == contender and not r.ok)
            row[contender] = {**summary(times), "failed": failed}
        base = row.get("build-remote")
        for contender in ("nixdist-cold", "nixdist-warm"):
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
    headers = ["workload", "drvs"]
    for contender in opts.contenders:
        headers.append(f"{contender} med [best] s")
        if contender != "build-remote" and "build-remote" in opts.contenders:
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
            if contender != "build-remote" and "build-remote" in opts.contenders:
                r_med = ratio(med, _stat(row, "build-remote", "median"))
                r_best = ratio(best, _stat(row, "build-remote", "best"))
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


def run_all(bench: Bench, runs: list[Run]) -> None:
    """Every round, appending to `runs` as they finish (so an interrupt keeps them)."""
    opts = bench.opts
    workloads = bench.workloads()
    for rnd in range(opts.rounds):
        for run in run_round(bench, rnd, workloads):
            runs.append(run)
            if opts.verbose or not run.ok:
                where = " ".join(f"{k}:{v}" for k, v in run.placements.items())
                print(
                    f"  round {rnd + 1} {run.workload:<8} {run.contender:<13} "
                    f"{run.seconds:8.3f} s  {'ok' if run.ok else 'FAILED'}  [{where}]",
                    flush=True,
                )
                if not run.ok:
                    print(run.error)
        print(f"round {rnd + 1}/{opts.rounds} done", flush=True)


def missing_tools() -> list[str]:
    missing = [t for t in ("nix-build", "nix-store", "nix-instantiate") if not shutil.which(t)]
    missing += [str(p) for p in (BUILD_REMOTE, NIXDIST_HOOK) if not p.exists()]
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    if missing := missing_tools():
        print(f"missing: {', '.join(missing)}")
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    info = machine_info()
    base = Path(tempfile.mkdtemp(prefix="nxb-"))
    bench = Bench(opts, base)
    runs: list[Run] = []
    interrupted = False
    try:
        print(f"farm: {opts.builders} builders x {opts.jobs} jobs in {base} ...", flush=True)
        bench.up()
        run_all(bench, runs)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", flush=True)
    finally:
        bench.teardown()
        shutil.rmtree(base, ignore_errors=True)
    rows = report(opts, runs)
    if rows:
        print_tables(opts, rows)
    options = {k: v for k, v in asdict(opts).items() if k != "json_path"}
    path = write_json(
        opts.json_path,
        {
            "benchmark": "hook_vs_build_remote",
            "machine": info,
            "options": options,
            "interrupted": interrupted,
            "summary": rows,
            "runs": [asdict(r) for r in runs],
        },
    )
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
