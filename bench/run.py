"""`make bench`: nixdist-hook and nixdist build against Nix 2.8's build-remote (issues 5, 14).

    W1  overhead-bound   200 trivial derivations (DAG 10 x 20), 3 builders x 4 slots, -j0;
                         and a local nix-build -j12 of the same DAG (the floor)
    W2  copy-bound       512 MiB of inputs over 200 store paths, one builder; ssh-cat ceiling
    W1-ng, W2-ng         W1 and W2 with the builders listed as ssh-ng:// (nix-daemon --stdio)
    W3  heterogeneous    60 derivations of fixed work, builders of speed 1, 2, 4 (2 jobs each)
    W4  hook start       process start to the first reply, the same recorded settings and try
    W5  scheduler        one choose() over 1000 machines (in process; no build-remote here)
    W6  relay            26 derivations of 4 MiB, layers alternating between builders of
                         feature fa and fb (2 + 2 x 2 jobs); only the top is asked for

W1-W3 and W6 run each contender (bench/contenders.py: Nix's build-remote, nixdist-hook,
nixdist build, and in W1 the local floor) on the same farm (one farm per workload, in a
temporary directory, under an alias prefix unique to this process), interleaved, the order
flipped every round, `--rounds` (3) times each. Details of each workload are in its module
(w1_dag.py ...) and in bench/README.md. The table at the end shows medians [best] and ratios
(nixdist-hook / build-remote, unless the measure names another) against the goals, and by
how much a missed goal is missed; every run is in bench/results/latest.json and a
timestamped copy. Nothing fails on time: the exit status is non-zero only when a run failed (a
build that did not finish, or outputs not where its contender promises them) or the
benchmark itself broke.

Other benchmarks, not in the default run: ``startup`` (bench/hook_startup.py: the hook's
import cost), ``nar`` (bench/nar_dump.py: NAR dump/hash against nix-store), ``hooks``
(bench/hook_vs_build_remote.py: chain, wide, 150 MB in and out, cold and warm masters).

    .venv/bin/python bench/run.py [--rounds 3] [--only w1,w2,w1-ng,w2-ng,w3,w4,w5,w6,startup,...]
    .venv/bin/python bench/run.py --quick        # small sizes, 1 round: a smoke run
    .venv/bin/python bench/run.py --client-nix 2.34 --only w1,w2,w3

``--client-nix VERSION`` runs W1-W3's client side (nix-instantiate, nix-build, the client's store)
as a farm client of that Nix (``Farm.client_argv``: its Debian root filesystem, a store of its
own), against that version's own hook and the client's nixdist-hook (nixdist build is left out:
a farm client has no ``nixdist``). W4 and W5 do not change.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from common import (
    BENCH_DIR,
    PYTHON,
    RESULTS_DIR,
    Outcome,
    client_label,
    interrupt_on_sigterm,
    machine_info,
    missing_tools,
    nix_own_hook,
    render_table,
    row_headers,
    timestamp,
    write_json,
)
from farmbench import run_problems, summarise_profiles

from nixdist.errors import ConfigError
from nixdist.farm.releases import KNOWN_VERSIONS, parse_nix_version
from nixdist.farm.rootfs import ensure_rootfs_info

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from w6_relay import W6Options

    Workload: TypeAlias = Callable[[Path, Callable[[str], None]], Outcome]

DEFAULT: Final = ("w1", "w2", "w1-ng", "w2-ng", "w3", "w4", "w5", "w6")
#: Older benchmarks, run as subprocesses: key -> (script, quick arguments).
EXTRA: Final = {
    "startup": ("hook_startup.py", ("--runs", "5")),
    "nar": ("nar_dump.py", ("--runs", "2", "--scale", "0.2")),
    "hooks": ("hook_vs_build_remote.py", ("--quick",)),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated, from {','.join([*DEFAULT, *EXTRA])} (default {','.join(DEFAULT)})",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender (3)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes (smoke run)")
    parser.add_argument(
        "--json",
        type=Path,
        help="write the results here only (default: bench/results/latest.json + a timestamped"
        " copy)",
    )
    parser.add_argument(
        "--profile-hook",
        type=Path,
        metavar="DIR",
        help="run nixdist-hook under cProfile in W1-W3 and W6 (one .prof per hook process in"
        " DIR/<workload>/) and print the summed profiles; its timings then mean nothing",
    )
    parser.add_argument(
        "--nix-option",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="pass --option NAME VALUE to every nix-build of W1-W3 and W6, for every contender"
        " but nixdist build"
        " (e.g. build-poll-interval 1); Nix's defaults otherwise",
    )
    parser.add_argument(
        "--client-nix",
        metavar="VERSION",
        type=_nix_version,
        help=f"W1-W3 and W6 as a client of this Nix ({', '.join(KNOWN_VERSIONS)}), against its own"
        " hook: a farm client (nixdist farm client); default the host's Nix",
    )
    _add_size_options(parser)
    return parser.parse_args(argv)


def _add_size_options(parser: argparse.ArgumentParser) -> None:
    """The sizes of each workload (``--w1-width`` ...)."""
    w1 = parser.add_argument_group("W1")
    w1.add_argument("--w1-width", type=int, default=20, help="derivations per layer (20)")
    w1.add_argument("--w1-layers", type=int, default=10, help="layers (10)")
    w2 = parser.add_argument_group("W2")
    w2.add_argument("--w2-mib", type=int, default=512, help="MiB of inputs (512)")
    w2.add_argument("--w2-paths", type=int, default=200, help="input store paths (200)")
    w2.add_argument("--w2-drvs", type=int, default=4, help="derivations sharing them (4)")
    w3 = parser.add_argument_group("W3")
    w3.add_argument("--w3-drvs", type=int, default=60, help="derivations (60)")
    w3.add_argument(
        "--w3-work-ms", type=int, default=4000, help="ms of work each at speed 1 (4000)"
    )
    w3.add_argument("--w3-jobs", type=int, default=2, help="jobs per builder (2)")
    parser.add_argument("--w4-runs", type=int, default=40, help="W4 samples per case (40)")
    parser.add_argument("--w5-machines", type=int, default=1000, help="W5 fleet size (1000)")
    w6 = parser.add_argument_group("W6")
    w6.add_argument("--w6-width", type=int, default=4, help="derivations per layer (4)")
    w6.add_argument("--w6-depth", type=int, default=6, help="layers (6)")
    w6.add_argument("--w6-kib", type=int, default=4096, help="KiB in each output (4096)")
    w6.add_argument("--w6-builders", type=int, default=2, help="builders per feature (2)")


def _nix_version(text: str) -> str:
    try:
        return parse_nix_version(text, source="--client-nix", field="--client-nix")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_plan(opts: argparse.Namespace) -> dict[str, Workload]:
    """The workloads, each a function of (temporary base directory, log)."""
    import w1_dag  # noqa: PLC0415 - imported where used, like the others
    import w2_copy  # noqa: PLC0415
    import w3_hetero  # noqa: PLC0415
    import w4_start  # noqa: PLC0415
    import w5_choose  # noqa: PLC0415
    import w6_relay  # noqa: PLC0415

    quick = opts.quick
    rounds = 1 if quick else opts.rounds
    profile = None if opts.profile_hook is None else str(opts.profile_hook.resolve())
    nix_options = tuple(
        word for name, value in opts.nix_option for word in ("--option", name, value)
    )
    w1 = w1_dag.W1Options(
        profile_dir=profile,
        nix_options=nix_options,
        client_nix=opts.client_nix,
        rounds=rounds,
        width=min(opts.w1_width, 10) if quick else opts.w1_width,
        layers=min(opts.w1_layers, 2) if quick else opts.w1_layers,
    )
    w2 = w2_copy.W2Options(
        profile_dir=profile,
        nix_options=nix_options,
        client_nix=opts.client_nix,
        rounds=rounds,
        mib=min(opts.w2_mib, 32) if quick else opts.w2_mib,
        paths=min(opts.w2_paths, 40) if quick else opts.w2_paths,
        drvs=opts.w2_drvs,
    )
    w3 = w3_hetero.W3Options(
        profile_dir=profile,
        nix_options=nix_options,
        client_nix=opts.client_nix,
        rounds=rounds,
        drvs=min(opts.w3_drvs, 12) if quick else opts.w3_drvs,
        work_ms=min(opts.w3_work_ms, 1000) if quick else opts.w3_work_ms,
        jobs=opts.w3_jobs,
    )
    w4 = w4_start.W4Options(runs=min(opts.w4_runs, 5) if quick else opts.w4_runs)
    w5 = w5_choose.W5Options(machines=opts.w5_machines, repeat=5 if quick else 15)
    w6 = _w6_options(opts, rounds=rounds, profile=profile, nix_options=nix_options)
    w1ng = dataclasses.replace(w1, scheme="ssh-ng")
    w2ng = dataclasses.replace(w2, scheme="ssh-ng")
    return {
        "w1": lambda base, log: w1_dag.run(base, w1, log),
        "w2": lambda base, log: w2_copy.run(base, w2, log),
        "w1-ng": lambda base, log: w1_dag.run(base, w1ng, log),
        "w2-ng": lambda base, log: w2_copy.run(base, w2ng, log),
        "w3": lambda base, log: w3_hetero.run(base, w3, log),
        "w4": lambda base, log: w4_start.run(base, w4, log),
        "w5": lambda _base, _log: w5_choose.run(w5),
        "w6": lambda base, log: w6_relay.run(base, w6, log),
    }


def _w6_options(
    opts: argparse.Namespace, *, rounds: int, profile: str | None, nix_options: tuple[str, ...]
) -> W6Options:
    import w6_relay  # noqa: PLC0415 - imported where used, like the others

    quick = opts.quick
    return w6_relay.W6Options(
        profile_dir=profile,
        nix_options=nix_options,
        client_nix=opts.client_nix,
        rounds=rounds,
        width=min(opts.w6_width, 3) if quick else opts.w6_width,
        depth=min(opts.w6_depth, 3) if quick else opts.w6_depth,
        kib=min(opts.w6_kib, 256) if quick else opts.w6_kib,
        builders=opts.w6_builders,
    )


def client_info(client_nix: str | None) -> dict[str, object]:
    """The Nix of W1-W3's client side and its own hook (a root filesystem is built if missing)."""
    if client_nix is None:
        return {"version": None, "nix": "host", "build_remote": nix_own_hook(None)}
    rootfs = ensure_rootfs_info(client_nix)
    return {
        "version": client_nix,
        "nix": rootfs.nix_version,
        "rootfs": str(rootfs.path),
        "build_remote": nix_own_hook(client_nix),
    }


def _client_words(client_nix: str | None) -> str:
    if client_nix is None:
        return f"{client_label(None)}, build-remote = {nix_own_hook(None)}"
    return (
        f"{client_label(client_nix)}, build-remote = '{nix_own_hook(client_nix)}' of {client_nix}"
    )


def nixdist_source() -> dict[str, object]:
    """Which nixdist the hooks will run: its source directory, and the git commit there."""
    where = subprocess.run(
        [
            str(PYTHON),
            "-c",
            "import nixdist, pathlib; print(pathlib.Path(nixdist.__file__).parent)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    git = ["git", "-C", str(BENCH_DIR.parent)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {"package": where, "repo_head": commit, "repo_src_changed_files": len(dirty)}


def log(line: str) -> None:
    print(line, flush=True)


def run_extra(key: str, *, quick: bool) -> int:
    script, quick_args = EXTRA[key]
    argv = [str(PYTHON), str(BENCH_DIR / script), *(quick_args if quick else ())]
    print(f"\n=== {key}: {' '.join(argv[1:])}", flush=True)
    return subprocess.run(argv, check=False, cwd=BENCH_DIR.parent).returncode


@dataclass(slots=True, kw_only=True)
class Session:
    """What a whole run collected, also when it was interrupted."""

    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    extras: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


def run_all(wanted: Sequence[str], plan: Mapping[str, Workload], *, quick: bool) -> Session:
    session = Session()
    base = Path(tempfile.mkdtemp(prefix="nxb-"))
    try:
        for key in wanted:
            if key in EXTRA:
                session.extras[key] = run_extra(key, quick=quick)
                continue
            print(f"\n=== {key.upper()}", flush=True)
            t0 = time.perf_counter()
            try:
                outcome = plan[key](base, log)
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                session.failures.append(f"{key}: {err}")
                print(f"{key} failed: {err}", flush=True)
                continue
            session.outcomes.append(outcome)
            print(f"{key} took {time.perf_counter() - t0:.0f} s", flush=True)
    except KeyboardInterrupt:
        session.interrupted = True
        print("\ninterrupted; cleaning up", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return session


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    wanted = [k for k in opts.only.split(",") if k]
    if unknown := sorted(set(wanted) - {*DEFAULT, *EXTRA}):
        print(f"unknown workload(s): {', '.join(unknown)}")
        return 2
    if missing := missing_tools():
        print(f"missing: {', '.join(missing)}")
        return 2
    interrupt_on_sigterm()
    info = {**machine_info(), "nixdist": nixdist_source(), "client": client_info(opts.client_nix)}
    print(f"nixdist under test: {info['nixdist']}", flush=True)
    print(f"client: {info['client']}", flush=True)
    started = time.perf_counter()
    session = run_all(wanted, build_plan(opts), quick=opts.quick)
    total = time.perf_counter() - started

    outcomes = session.outcomes
    rows = [row.cells() for o in outcomes for row in o.rows]
    goals = [g for o in outcomes for g in o.goals]
    if rows:
        print(
            "\n=== results: median [best] of each contender; ratio = nixdist-hook / build-remote"
            " unless the measure names another;"
            f" W1-W3, W6 client: {_client_words(opts.client_nix)}"
        )
        print(render_table(row_headers(opts.client_nix), rows, left=2))
    for note in (note for o in outcomes for note in o.notes):
        print(f"note: {note}")
    problems = session.failures + [
        f"{o.key}: {problem}" for o in outcomes for problem in _run_problems(o.data)
    ]
    data = {
        "benchmark": "nixdist bench (issues 5, 14)",
        "client_nix": opts.client_nix,
        "machine": info,
        "total_seconds": total,
        "interrupted": session.interrupted,
        "failures": problems,
        "goals": [g.as_json() for g in goals],
        "workloads": {o.key: o.data for o in outcomes},
        "extras": session.extras,
    }
    if opts.json is not None:
        paths = [write_json(opts.json, data)]
    else:
        paths = [
            write_json(RESULTS_DIR / f"{timestamp()}-bench.json", data),
            write_json(RESULTS_DIR / "latest.json", data),
        ]
    if opts.profile_hook is not None:
        print_profiles(opts.profile_hook, [o.key for o in outcomes])
    met = sum(1 for g in goals if g.met)
    print(f"\ngoals met: {met} of {len(goals)}; whole run {total:.0f} s")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("results: " + ", ".join(str(p) for p in paths))
    if session.interrupted:
        return 130
    return 1 if problems or any(session.extras.values()) else 0


def print_profiles(directory: Path, keys: Sequence[str]) -> None:
    for key in keys:
        if (directory / key).is_dir():
            print(f"\n=== {key.upper()}: nixdist-hook under cProfile, summed, by cumulative time")
            print(summarise_profiles(directory / key, top=30))
            print(f"=== {key.upper()}: by own time")
            print(summarise_profiles(directory / key, top=20, sort="tottime"))
    print(f"profiles: {directory}/<workload>/hook-<pid>.prof (timings above are profiled)")


def _run_problems(data: dict[str, object]) -> list[str]:
    """Runs that failed or broke their contender's promise (`farmbench.run_problems`)."""
    runs = data.get("runs")
    if not isinstance(runs, list):
        return []
    return run_problems(run for run in runs if isinstance(run, dict))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
