"""Run every benchmark (`make bench`), each as a subprocess of the venv's python, and summarise.

    bench/hook_startup.py            the hook's start-up cost against build-remote's
    bench/hook_vs_build_remote.py    the same builds through build-remote and nixdist, one farm
    bench/nar_dump.py                nixdist nar dump/hash against nix-store --dump / nix-hash
                                     (run if present; it prints its own table)

Each benchmark prints its own tables as it goes; the summary at the end puts the headline ratios
(nixdist / Nix; < 1 means nixdist is faster) next to the goals from bench/README.md. Results
are written to bench/results/<timestamp>*.json. Nothing fails on time: the exit status is
non-zero only when a benchmark itself failed to run.

    .venv/bin/python bench/run.py [--quick] [--only startup,hooks,nar]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from common import BENCH_DIR, PYTHON, RESULTS_DIR, fmt_ratio, render_table, timestamp

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

#: Goals (bench/README.md): ratio nixdist / Nix at or below these.
GOAL_NAR: Final = 1.5
GOAL_HOOK: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    key: str
    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    json_name: str | None  # None: the script writes no JSON we read


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    bench: Bench
    status: int
    seconds: float
    json_path: Path | None
    output_tail: tuple[str, ...]


BENCHES: Final = (
    Bench(
        key="startup",
        script="hook_startup.py",
        args=(),
        quick_args=("--runs", "5"),
        json_name="{ts}-startup.json",
    ),
    Bench(
        key="hooks",
        script="hook_vs_build_remote.py",
        args=(),
        quick_args=("--quick",),
        json_name="{ts}.json",
    ),
    Bench(
        key="nar",
        script="nar_dump.py",
        args=(),
        quick_args=("--runs", "2", "--scale", "0.2"),
        json_name=None,
    ),
)


def run_bench(bench: Bench, *, quick: bool, ts: str) -> Outcome:
    extra = bench.quick_args if quick else bench.args
    argv = [str(PYTHON), str(BENCH_DIR / bench.script), *extra]
    json_path = RESULTS_DIR / bench.json_name.format(ts=ts) if bench.json_name else None
    if json_path is not None:
        argv += ["--json", str(json_path)]
    print(f"\n=== {bench.script} {' '.join(argv[2:])}", flush=True)
    start = time.perf_counter()
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH_DIR.parent
    ) as proc:
        assert proc.stdout is not None  # noqa: S101 - Popen with PIPE
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail = [*tail[-39:], line.rstrip("\n")]
        status = proc.wait()
    return Outcome(
        bench=bench,
        status=status,
        seconds=time.perf_counter() - start,
        json_path=json_path if json_path is not None and json_path.exists() else None,
        output_tail=tuple(tail),
    )


def _goal(value: float, goal: float) -> str:
    if math.isnan(value):
        return "-"
    return f"<= {goal}x: " + ("met" if value <= goal else "MISSED")


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _ratio(text: str) -> float:
    try:
        return float(text.removesuffix("x"))
    except ValueError:
        return float("nan")


def _nar_rows(tail: Sequence[str]) -> list[list[str]]:
    """The result lines of nar_dump.py's table: '<workload> <op> ... <ratio>x <ratio>x'."""
    rows = []
    for line in tail:
        words = line.split()
        if len(words) < 8 or not (words[-1].endswith("x") and words[-2].endswith("x")):
            continue
        ops = [i for i, w in enumerate(words) if w in {"dump", "hash"}]
        if not ops:
            continue
        workload, op = " ".join(words[: ops[0]]), words[ops[0]]
        total = _ratio(words[-2])
        rows.append(
            [
                f"nar {op}: {workload}",
                fmt_ratio(total),
                f"{words[-1]} without start-up",
                _goal(total, GOAL_NAR),
            ]
        )
    return rows


def summarise(outcomes: Sequence[Outcome]) -> list[list[str]]:
    """Headline rows: measure, ratio nixdist / Nix, a note, the goal."""
    rows: list[list[str]] = []
    for outcome in outcomes:
        key = outcome.bench.key
        data = json.loads(outcome.json_path.read_text()) if outcome.json_path else None
        if key == "startup" and isinstance(data, dict):
            cases = data.get("cases", {})
            best = {name: _num(case.get("best")) * 1000 for name, case in cases.items()}
            note = ", ".join(
                f"{name.split()[0]} {ms:.0f} ms"
                for name, ms in best.items()
                if "(settings, EOF)" in name
            )
            value = _num(data.get("ratio", {}).get("best"))
            rows.append(["hook start-up (best)", fmt_ratio(value), note, "reported"])
        elif key == "hooks" and isinstance(data, dict):
            for row in data.get("summary", []):
                for contender in ("nixdist-cold", "nixdist-warm"):
                    value = _num(row.get(f"ratio_{contender}", {}).get("median"))
                    masters = "no ssh master yet" if contender.endswith("cold") else "masters up"
                    rows.append(
                        [
                            f"{row['workload']} wall time, {contender} (median)",
                            fmt_ratio(value),
                            masters,
                            _goal(value, GOAL_HOOK),
                        ]
                    )
        elif key == "nar":
            rows.extend(_nar_rows(outcome.output_tail))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, fast versions (smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(b.key for b in BENCHES),
        help="comma-separated: " + ",".join(b.key for b in BENCHES),
    )
    opts = parser.parse_args(argv)
    wanted = {k for k in opts.only.split(",") if k}
    if unknown := wanted - {b.key for b in BENCHES}:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    ts = timestamp()
    outcomes: list[Outcome] = []
    for bench in BENCHES:
        if bench.key not in wanted:
            continue
        if not (BENCH_DIR / bench.script).exists():
            print(f"\n=== {bench.script}: not present, skipped")
            continue
        try:
            outcomes.append(run_bench(bench, quick=opts.quick, ts=ts))
        except KeyboardInterrupt:
            print("\ninterrupted")
            return 130

    print("\n=== summary (ratio = nixdist / Nix; < 1: nixdist is faster)")
    print(
        render_table(
            ["benchmark", "status", "seconds", "results"],
            [
                [
                    o.bench.script,
                    "ok" if o.status == 0 else f"exit {o.status}",
                    f"{o.seconds:.0f}",
                    str(o.json_path.relative_to(BENCH_DIR.parent)) if o.json_path else "-",
                ]
                for o in outcomes
            ],
        )
    )
    if rows := summarise(outcomes):
        print()
        print(render_table(["measure", "nixdist / Nix", "note", "goal"], rows))
    print(
        f"\ngoals: nar dump/hash <= {GOAL_NAR}x of nix-store; DAG wall time and per-build "
        f"overhead <= {GOAL_HOOK}x of build-remote; start-up reported"
    )
    return 0 if all(o.status == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
