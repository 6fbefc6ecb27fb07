"""W2, copy-bound: 512 MiB of inputs over 200 store paths, built on one builder.

Before the clock starts (once per benchmark run), `paths` files of random, incompressible bytes
totalling `mib` MiB are added to the local store with ``nix-store --add``: half the bytes in a
few big paths (one in 25, e.g. 8 x 32 MiB), the other half spread over the rest (192 x ~1.3
MiB). `drvs` derivations (4) each take every `drvs`-th of them as inputs (so 2 big + 48 small,
128 MiB each) and only check that they exist. The farm has one builder with `drvs` jobs, so
all the derivations may be built, and their inputs copied, at once.

Every run starts with the builder's store empty (wiped and checked, untimed), and the
derivations get a fresh salt, so all 512 MiB cross the link in every run; the local copies
stay (the page cache holds them for every contender alike). Throughput = input bytes (10^6
bytes per MB) / wall time of the whole nix-build.

The ceiling, measured in the same rounds: ``cat <the 200 files> | ssh <builder> 'cat >
/dev/null'`` over the same farm link (a new ssh connection, the farm's ssh_config; run on
this machine, also with ``--client-nix``, reading the client's store directory), wall time
from start to exit. ``ssh <builder> true`` is timed too, to show the ceiling without the
connection set-up ("net"). Goals: nixdist-hook >= 1.2x build-remote's throughput and >= 0.8x
the ssh-cat ceiling (the plain command, set-up included).

``nixdist build`` (bench/contenders.py) builds the same derivations as a third contender; the
issue sets it no goal here, its throughput is shown against build-remote's and the ceiling.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from common import Goal, Outcome, Row, fmt_ratio, median, ratio
from contenders import BUILD_REMOTE, NIXDIST, NIXDIST_BUILD, available
from farmbench import BuildRun, FarmBench, profile_dir, round_order, run_cmd, words, workload_names
from w1_dag import describe_run, times_of

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

GOAL_VS_BUILD_REMOTE: Final = 1.2
GOAL_VS_CEILING: Final = 0.8
MIB: Final = 1 << 20
MB: Final = 1_000_000
BUILDER: Final = "c1"
SSH_CAT: Final = "ssh-cat"
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST, NIXDIST_BUILD)

COPY_NIX: Final = r"""
{ salt, system ? builtins.currentSystem }:
let groups = import ./w2-inputs.nix; in
builtins.genList (i: derivation {
  name = "nxb-w2-${toString i}";
  inherit system salt;
  srcs = map builtins.storePath (builtins.elemAt groups i);
  PATH = "/usr/bin:/bin";
  builder = "/bin/sh";
  args = [ "-c" ''
    echo "building $name on $(cat /etc/nix/nixdist-builder 2>/dev/null || echo local)"
    n=0; for s in $srcs; do test -e "$s"; n=$((n + 1)); done
    echo "$name $salt $n inputs" > "$out"
  '' ];
}) (builtins.length groups)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class W2Options:
    rounds: int = 3
    mib: int = 512
    paths: int = 200
    drvs: int = 4
    profile_dir: str | None = None  # run nixdist-hook under cProfile, see farmbench
    nix_options: tuple[str, ...] = ()  # extra nix-build arguments, e.g. --option k v
    client_nix: str | None = None  # the client's Nix (a farm client), None: the host's
    scheme: str = "ssh"  # how the machines file lists the builders: ssh or ssh-ng

    @property
    def key(self) -> str:
        return workload_names("w2", self.scheme)[0]

    @property
    def label(self) -> str:
        return workload_names("w2", self.scheme)[1]

    @property
    def contenders(self) -> tuple[str, ...]:
        return available(CONTENDERS, self.client_nix, self.scheme)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatRun:
    round: int
    seconds: float  # cat | ssh builder 'cat > /dev/null'
    connect_seconds: float  # ssh builder true
    ok: bool


def input_sizes(total: int, count: int) -> list[int]:
    """Half of `total` bytes in one path of 25 (at least one), half over the rest."""
    big_count = max(1, count // 25)
    small_count = count - big_count
    if small_count <= 0:
        return _spread(total, count)
    return _spread(total // 2, big_count) + _spread(total - total // 2, small_count)


def _spread(total: int, count: int) -> list[int]:
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def make_inputs(bench: FarmBench, opts: W2Options) -> tuple[list[str], int]:
    """Random files added to the local store (untimed); returns (store paths, total bytes)."""
    directory = bench.base / "w2-files"
    directory.mkdir()
    sizes = input_sizes(opts.mib * MIB, opts.paths)
    files: list[str] = []
    for i, size in enumerate(sizes):
        file = directory / f"nxb-w2-in-{i:03}"
        with file.open("wb") as out:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MIB))
                out.write(chunk)
                left -= len(chunk)
        files.append(str(file))
    added = words(bench.run_nix(["nix-store", "--add", *files]), "nix-store --add")
    bench.keep.update(added)
    for name in files:
        os.unlink(name)  # noqa: PTH108 - a plain file
    return added, sum(sizes)


def write_groups(bench: FarmBench, paths: Sequence[str], groups: int) -> None:
    """w2-inputs.nix: `groups` lists, each with every `groups`-th path (big ones spread)."""
    lists = [paths[i::groups] for i in range(groups)]
    text = (
        "[\n"
        + "".join("  [ " + " ".join(f'"{p}"' for p in group) + " ]\n" for group in lists)
        + "]\n"
    )
    bench.write_expr("w2-inputs.nix", text)


def ssh_cat(bench: FarmBench, files: Sequence[str], rnd: int) -> CatRun:
    """The ceiling: the same bytes through one plain ssh session to the builder."""
    ssh = bench.farm.ssh_argv(BUILDER)
    start = time.perf_counter()
    connect = run_cmd([*ssh, "true"], timeout=120)
    connect_seconds = time.perf_counter() - start
    start = time.perf_counter()
    files = [bench.host_path(f) for f in files]
    with subprocess.Popen(["cat", *files], stdout=subprocess.PIPE) as cat:
        sink = subprocess.run(
            [*ssh, "cat > /dev/null"], stdin=cat.stdout, capture_output=True, check=False
        )
        status = cat.wait()
    seconds = time.perf_counter() - start
    return CatRun(
        round=rnd,
        seconds=seconds,
        connect_seconds=connect_seconds,
        ok=connect.returncode == 0 and sink.returncode == 0 and status == 0,
    )


def run(base: Path, opts: W2Options, log: Callable[[str], None]) -> Outcome:
    bench = FarmBench(
        base,
        opts.key,
        profile_dir=profile_dir(opts.profile_dir, opts.key),
        client_nix=opts.client_nix,
        specs=[make_spec(BUILDER, jobs=opts.drvs, scheme=opts.scheme)],
    )
    runs: list[BuildRun] = []
    cats: list[CatRun] = []
    payload = 0
    try:
        bench.up()
        log(f"  w2: adding {opts.paths} paths, {opts.mib} MiB of random bytes (untimed)")
        inputs, payload = make_inputs(bench, opts)
        write_groups(bench, inputs, opts.drvs)
        expr = bench.write_expr("copy.nix", COPY_NIX)
        for rnd in range(opts.rounds):
            for contender in round_order(rnd, (*opts.contenders, SSH_CAT)):
                left = bench.wipe_builders()
                there = set(bench.farm.builder_store_paths(BUILDER)) & set(inputs)
                if there or any(left.values()):
                    raise RuntimeError(f"w2: the builder's store is not empty: {left}")
                if contender == SSH_CAT:
                    cat = ssh_cat(bench, inputs, rnd)
                    cats.append(cat)
                    log(
                        f"  {opts.key} round {rnd + 1} {SSH_CAT:<12} {cat.seconds:8.2f} s  "
                        f"{'ok' if cat.ok else 'FAILED'}  (ssh true {cat.connect_seconds:.2f} s)"
                    )
                    continue
                drvs = bench.instantiate(expr, fresh_salt(f"{opts.key}-{contender}-r{rnd}"))
                run_ = bench.timed_run(
                    workload=opts.key,
                    contender=contender,
                    rnd=rnd,
                    drvs=drvs,
                    derivations=len(drvs),
                    extra=opts.nix_options,
                )
                runs.append(run_)
                log(describe_run(run_) + f"  {payload / MB / run_.seconds:.0f} MB/s")
    finally:
        bench.teardown()
    return outcome(opts, runs, cats, payload)


def _rate(payload: int, seconds: float) -> float:
    return payload / MB / seconds if seconds > 0 else float("nan")


def _rates(payload: int, times: Sequence[float]) -> str:
    """``median [best]`` MB/s from wall times."""
    if not times:
        return "-"
    return f"{_rate(payload, median(times)):.0f} [{_rate(payload, min(times)):.0f}] MB/s"


def outcome(opts: W2Options, runs: list[BuildRun], cats: list[CatRun], payload: int) -> Outcome:
    payload = payload or opts.mib * MIB
    times = times_of(runs, CONTENDERS)
    cat_times = [c.seconds for c in cats if c.ok]
    net_times = [c.seconds - c.connect_seconds for c in cats if c.ok]
    rate = {c: _rate(payload, median(t)) if t else float("nan") for c, t in times.items()}
    rate[SSH_CAT] = _rate(payload, median(cat_times)) if cat_times else float("nan")
    ceiling_net = _rate(payload, median(net_times)) if net_times else float("nan")
    vs_br = ratio(rate[NIXDIST], rate[BUILD_REMOTE])
    vs_ceiling = ratio(rate[NIXDIST], rate[SSH_CAT])
    goals = (
        Goal(
            workload=opts.label,
            measure="throughput nixdist / build-remote",
            value=vs_br,
            target=GOAL_VS_BUILD_REMOTE,
            at_most=False,
        ),
        Goal(
            workload=opts.label,
            measure="throughput nixdist / ssh-cat ceiling",
            value=vs_ceiling,
            target=GOAL_VS_CEILING,
            at_most=False,
        ),
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "payload_bytes": payload,
        "seconds": times,
        "ssh_cat_seconds": cat_times,
        "ssh_connect_seconds": [c.connect_seconds for c in cats if c.ok],
        "mb_per_s": {**rate, "ssh-cat-net": ceiling_net},
        "ratio_vs_build_remote": vs_br,
        "ratio_nixdist_build_vs_build_remote": ratio(rate[NIXDIST_BUILD], rate[BUILD_REMOTE]),
        "ratio_vs_ceiling": vs_ceiling,
        "runs": [asdict(r) for r in runs],
        "ssh_cat_runs": [asdict(c) for c in cats],
    }
    note = (
        f"W2 ssh-cat ceiling without the connection set-up (ssh true, median): "
        f"{ceiling_net:.0f} MB/s; nixdist-hook reaches "
        f"{fmt_ratio(ratio(rate[NIXDIST], ceiling_net))} of it, nixdist build "
        f"{fmt_ratio(ratio(rate[NIXDIST_BUILD], ceiling_net))}"
    )
    rows = _rows(opts, payload, {**times, SSH_CAT: cat_times}, rate, goals)
    return Outcome(key=opts.key, data=data, rows=rows, goals=goals, notes=(note,))


def _rows(
    opts: W2Options,
    payload: int,
    times: Mapping[str, Sequence[float]],
    rate: Mapping[str, float],
    goals: Sequence[Goal],
) -> tuple[Row, ...]:
    """The table's lines: MB/s of each contender, their ratios and the ceiling."""
    ceiling = rate[SSH_CAT]
    return (
        Row(
            workload=opts.label,
            measure=f"{payload / MIB:.0f} MiB in {opts.paths} paths, {opts.drvs} drvs,"
            " 1 builder: MB/s",
            build_remote=_rates(payload, times[BUILD_REMOTE]),
            nixdist=_rates(payload, times[NIXDIST]),
            nixdist_build=_rates(payload, times[NIXDIST_BUILD]),
            ratio=fmt_ratio(goals[0].value),
            goal=goals[0],
        ),
        Row(
            workload=opts.label,
            measure="  ratio nixdist build / build-remote (throughput)",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(ratio(rate[NIXDIST_BUILD], rate[BUILD_REMOTE])),
        ),
        Row(
            workload=opts.label,
            measure=f"  vs ssh-cat ceiling {_rates(payload, times[SSH_CAT])}",
            build_remote=fmt_ratio(ratio(rate[BUILD_REMOTE], ceiling)),
            nixdist=fmt_ratio(goals[1].value),
            nixdist_build=fmt_ratio(ratio(rate[NIXDIST_BUILD], ceiling)),
            ratio="",
            goal=goals[1],
        ),
        Row(
            workload=opts.label,
            measure="  wall s, median",
            build_remote=f"{median(times[BUILD_REMOTE]):.2f}",
            nixdist=f"{median(times[NIXDIST]):.2f}",
            nixdist_build=f"{median(times[NIXDIST_BUILD]):.2f}",
            ratio=f"ceiling {median(times[SSH_CAT]):.2f}",
        ),
    )
