"""Benchmark: the hook's start-up cost, nixdist-hook against Nix 2.8's build-remote.

Nix starts a hook process for every derivation it may build remotely (and a new one after each
accepted build), so whatever the hook does before its first reply is on every remote build's
critical path. Measured here, best and median of N runs each (after one warm-up run, so the
bytecode cache is hot):

    python -c pass                  the venv interpreter's own floor
    python -c 'import nixdist.hook.main'
                                    our import cost on top of that
    nixdist-hook 0                  a whole hook process: it reads a settings block (the 91
    build-remote 0                  settings real Nix 2.8 sent, from tests/vectors/hook, with
                                    `builders` naming a 3-machine file), parses the machines,
                                    then gets EOF instead of a `try` and exits 0

build-remote is started with argv[0] = "build-remote" (the `nix` binary dispatches on it). The
ratio is nixdist / build-remote (< 1: nixdist is faster). Then ``-X importtime`` names the
modules that cost the most to import (best of a few runs per module), and ``--profile`` adds a
cProfile of one whole hook run. Nothing fails on time.

    .venv/bin/python bench/hook_startup.py [--runs 20] [--profile]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from common import (
    BUILD_REMOTE,
    NIXDIST_HOOK,
    PYTHON,
    REPO,
    RESULTS_DIR,
    fmt_ratio,
    machine_info,
    ratio,
    render_table,
    summary,
    timestamp,
    write_json,
)

from nixdist.protocol.hook import encode_settings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

VECTOR: Final = REPO / "tests" / "vectors" / "hook" / "build-remote.json"
_IMPORTTIME_RE: Final = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    argv: tuple[str, ...]
    executable: str | None = None
    stdin: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportCost:
    module: str
    depth: int
    self_us: int
    cumulative_us: int


def settings_block(machines: Path, hook: str) -> bytes:
    """Real Nix 2.8 settings (from the recorded vector), pointed at our machines file."""
    try:
        recorded: dict[str, str] = json.loads(VECTOR.read_text())["stdin"]["settings"]
    except (OSError, KeyError, ValueError):
        recorded = {"max-jobs": "0", "system": "x86_64-linux", "substituters": ""}
    settings = {**recorded, "builders": f"@{machines}", "build-hook": hook}
    return encode_settings(sorted(settings.items()))


def write_machines(path: Path) -> None:
    lines = [f"ssh://nxb-startup-b{i} x86_64-linux - 2 1 - - -" for i in range(1, 4)]
    path.write_text("".join(line + "\n" for line in lines))


def run_once(case: Case, env: Mapping[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        list(case.argv),
        executable=case.executable,
        input=case.stdin,
        capture_output=True,
        check=False,
        env=dict(env),
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(
            f"{case.name} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
        )
    return elapsed


def measure(cases: Sequence[Case], runs: int, env: Mapping[str, str]) -> dict[str, list[float]]:
    """Every case `runs` times, interleaved (case A, B, C, A, B, C, ...) after a warm-up."""
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    for case in cases:
        run_once(case, env)
    for _ in range(runs):
        for case in cases:
            times[case.name].append(run_once(case, env))
    return times


def import_costs(env: Mapping[str, str], repeats: int = 5) -> list[ImportCost]:
    """``-X importtime`` of ``import nixdist.hook.main``, the best of `repeats` per module."""
    best: dict[str, ImportCost] = {}
    for _ in range(repeats):
        result = subprocess.run(
            [str(PYTHON), "-X", "importtime", "-c", "import nixdist.hook.main"],
            capture_output=True,
            text=True,
            check=True,
            env=dict(env),
        )
        for line in result.stderr.splitlines():
            match = _IMPORTTIME_RE.match(line)
            if not match:
                continue
            self_us, cumulative_us, indent, module = match.groups()
            cost = ImportCost(
                module=module,
                depth=len(indent) // 2,
                self_us=int(self_us),
                cumulative_us=int(cumulative_us),
            )
            old = best.get(module)
            if old is None or cost.cumulative_us < old.cumulative_us:
                best[module] = cost
    return sorted(best.values(), key=lambda c: -c.self_us)


def profile_hook(stdin: bytes, top: int) -> str:
    """cProfile of one whole hook run, in this process (stdin replaced by the settings)."""
    script = (
        "import sys, io, os\n"
        "r, w = os.pipe()\n"
        "os.write(w, sys.stdin.buffer.read()); os.close(w); os.dup2(r, 0)\n"
        "sys.argv = ['nixdist-hook', '0']\n"
        "import cProfile, pstats\n"
        "prof = cProfile.Profile()\n"
        "prof.enable()\n"
        "from nixdist.hook.main import main\n"
        "code = main()\n"
        "prof.disable()\n"
        "out = io.StringIO()\n"
        f"pstats.Stats(prof, stream=out).sort_stats('cumulative').print_stats({top})\n"
        "sys.stdout.write(out.getvalue())\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [str(PYTHON), "-c", script], input=stdin, capture_output=True, check=False
    )
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (20)")
    parser.add_argument("--top", type=int, default=15, help="import offenders to list (15)")
    parser.add_argument("--profile", action="store_true", help="cProfile one hook run")
    parser.add_argument(
        "--json", type=Path, help="result file (bench/results/<timestamp>-startup.json)"
    )
    opts = parser.parse_args(argv)
    missing = [str(p) for p in (BUILD_REMOTE, NIXDIST_HOOK) if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)}")
        return 2
    info = machine_info()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="nxb-startup-") as tmp:
        base = Path(tmp)
        machines = base / "machines"
        write_machines(machines)
        # The hook's state (slot locks, ssh sockets) stays in this directory.
        env["NIXDIST_STATE_DIR"] = str(base / "state")
        env["NIX_CURRENT_LOAD"] = str(base / "current-load")
        cases = [
            Case(name="python -c pass", argv=(str(PYTHON), "-c", "pass")),
            Case(
                name="python -c 'import nixdist.hook.main'",
                argv=(str(PYTHON), "-c", "import nixdist.hook.main"),
            ),
            Case(
                name="nixdist-hook (settings, EOF)",
                argv=(str(NIXDIST_HOOK), "0"),
                stdin=settings_block(machines, str(NIXDIST_HOOK)),
            ),
            Case(
                name="build-remote (settings, EOF)",
                argv=("build-remote", "0"),
                executable=str(BUILD_REMOTE),
                stdin=settings_block(machines, str(BUILD_REMOTE)),
            ),
        ]
        print(f"{opts.runs} runs per case, interleaved ...", flush=True)
        times = measure(cases, opts.runs, env)
        costs = import_costs(env)
        profile = (
            profile_hook(settings_block(machines, str(NIXDIST_HOOK)), 30) if opts.profile else ""
        )
    stats = {name: summary(ts) for name, ts in times.items()}
    rows = [
        [name, f"{1000 * s['best']:.1f}", f"{1000 * s['median']:.1f}"] for name, s in stats.items()
    ]
    print()
    print(render_table(["case", "best ms", "median ms"], rows))
    ours, theirs = stats[cases[2].name], stats[cases[3].name]
    best_ratio = ratio(ours["best"], theirs["best"])
    median_ratio = ratio(ours["median"], theirs["median"])
    floor = stats[cases[0].name]["best"]
    imports = stats[cases[1].name]["best"] - floor
    print(
        f"\nhook start-up ratio nixdist / build-remote: {fmt_ratio(best_ratio)} (best), "
        f"{fmt_ratio(median_ratio)} (median)"
    )
    print(
        f"of nixdist-hook's best {1000 * ours['best']:.1f} ms: interpreter "
        f"{1000 * floor:.1f} ms, importing nixdist.hook.main {1000 * imports:.1f} ms, "
        f"the rest {1000 * (ours['best'] - floor - imports):.1f} ms"
    )

    total = next((c.cumulative_us for c in costs if c.module == "nixdist.hook.main"), 0)
    print(f"\n-X importtime: import nixdist.hook.main = {total / 1000:.1f} ms (best of 5)")
    print("top modules by self time (their own code, not what they import):")
    top = costs[: opts.top]
    print(
        render_table(
            ["module", "self ms", "cumulative ms"],
            [[c.module, f"{c.self_us / 1000:.2f}", f"{c.cumulative_us / 1000:.2f}"] for c in top],
        )
    )
    ours_self = sum(c.self_us for c in costs if c.module.startswith("nixdist"))
    stdlib_self = sum(c.self_us for c in costs if not c.module.startswith("nixdist"))
    print(
        f"self time in nixdist modules {ours_self / 1000:.1f} ms, in the standard library "
        f"{stdlib_self / 1000:.1f} ms"
    )
    if profile:
        print("\ncProfile of one nixdist-hook run (settings, EOF), by cumulative time:")
        print(profile)

    path = write_json(
        opts.json or RESULTS_DIR / f"{timestamp()}-startup.json",
        {
            "benchmark": "hook_startup",
            "machine": info,
            "runs": opts.runs,
            "cases": {name: {**stats[name], "times": times[name]} for name in times},
            "ratio": {"best": best_ratio, "median": median_ratio},
            "import_offenders": [
                {"module": c.module, "self_us": c.self_us, "cumulative_us": c.cumulative_us}
                for c in top
            ],
        },
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
