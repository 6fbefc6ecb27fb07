"""W4, hook start: wall time from starting the hook process to its first reply on stderr.

Nix runs the hook protocol synchronously: while a hook starts and decides, Nix's whole build
loop waits. So the time from ``fork`` to the first ``# accept`` / ``# decline`` /
``# postpone`` line is paid on every remote build. Each sample here starts the hook (argv as
Nix passes it: ``<hook> 3``; build-remote as argv[0] ``build-remote``), writes what Nix writes
(the 91 settings a real Nix 2.8 sent, recorded in tests/vectors/hook/build-remote.json, with
``builders`` pointing at this workload's machines file, then that recording's ``try``: not
willing to build locally, x86_64-linux, feature ``big-parallel``, for a real local derivation
that requires it), and reads stderr until a line starting with ``# ``. Then stdin is closed and
the process is reaped (untimed). Two cases, on a farm of one builder:

    accept    the builder offers big-parallel: the reply is ``# accept``; both hooks open their
              session to the builder before replying (build-remote a new ssh connection,
              nixdist a session through its control master, which a warm-up run started)
    decline   the same machine, listed without the feature: ``# decline`` (start-up + decision)

`runs` samples per contender and case, interleaved (A B A B ...), after one warm-up run each.
Goal: nixdist-hook's median <= 60 ms (both cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Final

from common import NIXDIST_HOOK, REPO, Goal, Outcome, Row, fmt_ratio, median, ratio
from farmbench import CONTENDERS, FarmBench, round_order

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt
from nixdist.model.machines import render_machine
from nixdist.model.request import BuildRequest
from nixdist.protocol.hook import encode_settings, encode_try

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

GOAL_MS: Final = 60.0
VECTOR: Final = REPO / "tests" / "vectors" / "hook" / "build-remote.json"
BUILDER: Final = "t1"
CASES: Final = ("accept", "decline")

DRV_NIX: Final = r"""
{ salt, system ? builtins.currentSystem }:
derivation {
  name = "nxb-w4";
  inherit system salt;
  requiredSystemFeatures = [ "big-parallel" ];
  builder = "/bin/sh";
  args = [ "-c" "echo $salt > $out" ];
}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class W4Options:
    runs: int = 40


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    contender: str
    case: str
    seconds: float
    reply: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    settings: dict[str, str]
    request: BuildRequest
    verbosity: str


def load_vector() -> Recorded:
    data = json.loads(VECTOR.read_text())
    [req] = [r for r in data["stdin"]["requests"] if r["type"] == "try"]
    return Recorded(
        settings=dict(data["stdin"]["settings"]),
        request=BuildRequest(
            am_willing=bool(req["am_willing"]),
            system=req["system"],
            drv_path=req["drv_path"],
            required_features=frozenset(req["required_features"]),
        ),
        verbosity=str(data["hook_argv"][-1]),
    )


def first_reply(
    argv: Sequence[str], executable: str, stdin: bytes, env: Mapping[str, str]
) -> tuple[float, str]:
    """Start the hook, feed it `stdin`: seconds until its first reply line, and that line."""
    start = time.perf_counter()
    with subprocess.Popen(
        list(argv),
        executable=executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(env),
    ) as proc:
        assert proc.stdin is not None  # noqa: S101 - Popen with PIPE
        assert proc.stderr is not None  # noqa: S101 - Popen with PIPE
        proc.stdin.write(stdin)
        proc.stdin.flush()
        buffer = b""
        reply = ""
        fd = proc.stderr.fileno()
        while not reply:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            lines = buffer.split(b"\n")
            buffer = lines[-1]
            reply = next((ln.decode() for ln in lines[:-1] if ln.startswith(b"# ")), "")
        elapsed = time.perf_counter() - start
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not reply:
        tail = buffer.decode(errors="replace")[-500:]
        raise RuntimeError(f"w4: {argv[0]} exited without a reply: {tail}")
    return elapsed, reply


def run(base: Path, opts: W4Options, log: Callable[[str], None]) -> Outcome:
    recorded = load_vector()
    bench = FarmBench(base, "w4", specs=[make_spec(BUILDER, jobs=4, features=["big-parallel"])])
    samples: list[Sample] = []
    try:
        bench.up()
        [drv] = bench.instantiate(bench.write_expr("w4.nix", DRV_NIX), fresh_salt("w4"))
        request = replace(recorded.request, drv_path=drv)
        declining = bench.base / "machines-without-feature"
        declining.write_text(
            "".join(
                render_machine(replace(m, supported_features=frozenset())) + "\n"
                for m in bench.farm.machines()
            )
        )
        machines = {"accept": bench.farm.machines_file, "decline": declining}
        inputs: dict[tuple[str, str], tuple[list[str], str, bytes, dict[str, str]]] = {}
        for contender in CONTENDERS:
            hook, extra_env = bench.hook_env(contender)
            name = "build-remote" if contender == "build-remote" else str(NIXDIST_HOOK)
            for case in CASES:
                settings = {
                    **recorded.settings,
                    "builders": f"@{machines[case]}",
                    "build-hook": str(hook),
                }
                stdin = encode_settings(sorted(settings.items())) + encode_try(request)
                inputs[contender, case] = (
                    [name, recorded.verbosity],
                    str(hook),
                    stdin,
                    {**bench.env, **extra_env},
                )
        for (contender, case), (argv, executable, stdin, env) in inputs.items():
            _, reply = first_reply(argv, executable, stdin, env)  # warm-up
            log(f"  w4 warm-up {contender:<12} {case:<8} {reply}")
        for i in range(opts.runs):
            for contender in round_order(i):
                for case in CASES:
                    argv, executable, stdin, env = inputs[contender, case]
                    seconds, reply = first_reply(argv, executable, stdin, env)
                    samples.append(
                        Sample(contender=contender, case=case, seconds=seconds, reply=reply)
                    )
        for contender in CONTENDERS:
            for case in CASES:
                ms = [
                    1000 * s.seconds for s in samples if (s.contender, s.case) == (contender, case)
                ]
                log(f"  w4 {contender:<12} {case:<8} median {_ms(ms)} ms")
    finally:
        bench.teardown()
    return outcome(opts, samples)


def outcome(opts: W4Options, samples: list[Sample]) -> Outcome:
    ms: dict[str, dict[str, list[float]]] = {
        case: {
            c: [1000 * s.seconds for s in samples if s.contender == c and s.case == case]
            for c in CONTENDERS
        }
        for case in CASES
    }
    replies = sorted({f"{s.contender} {s.case}: {s.reply}" for s in samples})
    expected = {"accept": "# accept", "decline": "# decline"}
    wrong = [r for r in replies if not r.endswith(expected[r.split(":")[0].split()[-1]])]
    goals = tuple(
        Goal(
            workload="W4",
            measure=f"nixdist-hook median ms to first reply ({case})",
            value=median(ms[case]["nixdist"]),
            target=GOAL_MS,
            unit="ms",
        )
        for case in CASES
    )
    rows = tuple(
        Row(
            workload="W4",
            measure=f"ms from start to '{expected[case]}'",
            build_remote=_ms(ms[case]["build-remote"]),
            nixdist=_ms(ms[case]["nixdist"]),
            ratio=fmt_ratio(ratio(median(ms[case]["nixdist"]), median(ms[case]["build-remote"]))),
            goal=goal,
        )
        for case, goal in zip(CASES, goals, strict=True)
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "ms": ms,
        "median_ms": {case: {c: median(v) for c, v in by.items()} for case, by in ms.items()},
        "best_ms": {
            case: {c: min(v) if v else float("nan") for c, v in by.items()}
            for case, by in ms.items()
        },
        "replies": replies,
        "unexpected_replies": wrong,
    }
    notes = tuple(f"W4 unexpected reply: {r}" for r in wrong)
    return Outcome(key="w4", data=data, rows=rows, goals=goals, notes=notes)


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.1f} [{min(values):.1f}]"
