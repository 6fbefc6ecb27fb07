"""Benchmark: `nixdist nar dump` / `nar hash` against `nix-store --dump` / `nix-hash`.

Builds a few trees under /tmp, checks that both tools produce the same bytes, then times each
tool writing to /dev/null (best of N runs, after a warm-up run so the page cache is hot) and
prints a table with the ratio nixdist / nix. The goal is a ratio within 1.5x. Nothing here
fails on time; this is a measurement, not a test.

    .venv/bin/python bench/nar_dump.py [--runs 5] [--scale 1.0] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NIXDIST = str(Path(sys.executable).with_name("nixdist"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    path: Path
    files: int
    size: int


def _fill(path: Path, size: int, rng: random.Random) -> None:
    # compressible-but-not-trivial data, generated quickly
    block = rng.randbytes(min(size, 1 << 16))
    with path.open("wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            left -= len(piece)


def make_mixed(root: Path, scale: float, rng: random.Random) -> Workload:
    """A few thousand small files plus some MiB-sized ones (~300 MB at scale 1)."""
    files = 0
    size = 0
    for d in range(int(60 * scale) or 1):
        sub = root / f"pkg{d:03}" / "lib"
        sub.mkdir(parents=True)
        for f in range(50):
            n = rng.randint(200, 16_000)
            _fill(sub / f"mod{f:02}.py", n, rng)
            if f % 10 == 0:
                (sub / f"mod{f:02}.py").chmod(0o755)
            files += 1
            size += n
        (root / f"pkg{d:03}" / "current").symlink_to("lib")
    big = root / "share" / "blobs"
    big.mkdir(parents=True)
    for i in range(int(40 * scale) or 1):
        n = rng.randint(4 << 20, 10 << 20)
        _fill(big / f"blob{i:02}.bin", n, rng)
        files += 1
        size += n
    return Workload(name="mixed (small + MiB files)", path=root, files=files, size=size)


def make_small(root: Path, scale: float, rng: random.Random) -> Workload:
    """Many small files in nested directories (~20,000 at scale 1)."""
    files = 0
    size = 0
    for a in range(int(20 * scale) or 1):
        for b in range(20):
            sub = root / f"a{a:02}" / f"b{b:02}"
            sub.mkdir(parents=True)
            for f in range(50):
                n = rng.randint(0, 2_000)
                (sub / f"f{f:02}").write_bytes(rng.randbytes(n))
                files += 1
                size += n
    return Workload(name="many small files", path=root, files=files, size=size)


def make_big(root: Path, scale: float, rng: random.Random) -> Workload:
    """One large file (256 MiB at scale 1)."""
    n = int((256 << 20) * scale) or 1
    _fill(root, n, rng)
    return Workload(name="one large file", path=root, files=1, size=n)


# Time nixdist as installed normally: with its bytecode cached (the warm-up run writes it).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def best_of(args: list[str], runs: int) -> float:
    subprocess.run(args, stdout=subprocess.DEVNULL, check=True, env=_ENV)  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, stdout=subprocess.DEVNULL, check=True, env=_ENV)
        best = min(best, time.perf_counter() - start)
    return best


def digest_of(args: list[str]) -> str:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert proc.stdout is not None  # noqa: S101 - Popen with PIPE
    digest = hashlib.sha256()
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
    proc.stdout.close()
    if proc.wait() != 0:
        raise SystemExit(f"{args[0]} failed")
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (best is kept)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the workload sizes")
    parser.add_argument("--keep", action="store_true", help="keep the generated trees")
    opts = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="nixdist-bench-nar-"))
    rng = random.Random(42)  # noqa: S311 - benchmark data, not secrets
    try:
        print(f"building trees in {base} ...", flush=True)
        workloads = [
            make_mixed(base / "mixed", opts.scale, rng),
            make_small(base / "small", opts.scale, rng),
            make_big(base / "big", opts.scale, rng),
        ]
        tiny = base / "tiny"
        tiny.write_bytes(b"x")
        start_nix = best_of(["nix-store", "--dump", str(tiny)], opts.runs)
        start_ours = best_of([NIXDIST, "nar", "dump", str(tiny)], opts.runs)
        rows = []
        for w in workloads:
            ours_dump = [NIXDIST, "nar", "dump", str(w.path)]
            nix_dump = ["nix-store", "--dump", str(w.path)]
            if digest_of(ours_dump) != digest_of(nix_dump):
                print(f"MISMATCH: {w.name}: nixdist and nix-store dump different bytes")
                return 1
            for op, ours, theirs in [
                ("dump", ours_dump, nix_dump),
                (
                    "hash",
                    [NIXDIST, "nar", "hash", str(w.path)],
                    ["nix-hash", "--type", "sha256", "--base32", str(w.path)],
                ),
            ]:
                t_nix = best_of(theirs, opts.runs)
                t_ours = best_of(ours, opts.runs)
                rows.append((w, op, t_nix, t_ours))
        header = (
            f"{'workload':<26} {'op':<5} {'files':>6} {'MB':>6} "
            f"{'nix (s)':>8} {'nixdist (s)':>11} {'ratio':>6} {'ratio w/o startup':>18}"
        )
        print()
        print(f"best of {opts.runs} runs, output to /dev/null")
        print(
            f"startup (dump of a 1-byte file): nix-store {start_nix:.3f} s, "
            f"nixdist {start_ours:.3f} s"
        )
        print(header)
        print("-" * len(header))
        for w, op, t_nix, t_ours in rows:
            work_nix = max(t_nix - start_nix, 1e-6)
            work_ours = max(t_ours - start_ours, 1e-6)
            print(
                f"{w.name:<26} {op:<5} {w.files:>6} {w.size / 1e6:>6.0f} "
                f"{t_nix:>8.3f} {t_ours:>11.3f} {t_ours / t_nix:>5.2f}x "
                f"{work_ours / work_nix:>17.2f}x"
            )
        print("\ngoal: ratio <= 1.5x")
    finally:
        if opts.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
