"""What the integration tests share: running real nix-build with a hook, reading results.

Importable from any test as ``import nixrun`` (pytest's ``pythonpath`` includes tests/).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nixdist.farm.builds import fresh_salt
from nixdist.farm.builds import nix_build_argv as farm_nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DAG = FIXTURES / "dag.nix"
HOOKTEST = FIXTURES / "hooktest.nix"
HOOK = Path(sys.executable).with_name("nixdist-hook")
# A guard against a hang, never a performance limit: a stuck run fails instead of blocking CI.
HANG_GUARD_S = 900
# Options for a build on this host rather than on a builder. The fixtures' builder is the
# host's /bin/sh with tools from /usr/bin, which Nix's sandbox does not contain (Debian's Nix
# has no sandbox shell), so local builds run unsandboxed, as the farm builders' do.
LOCAL_BUILD = ("--option", "sandbox", "false")

__all__ = ["fresh_salt"]  # re-exported: tests take it from here with the rest


def nix_build_argv(
    args: Sequence[str], *, builders: str, jobs: int = 0, hook: Path | None = HOOK
) -> list[str]:
    """`nixdist.farm.builds.nix_build_argv`, through nixdist-hook unless told otherwise."""
    return farm_nix_build_argv(args, builders=builders, hook=hook, jobs=jobs)


def nix_build(
    args: Sequence[str],
    env: dict[str, str],
    *,
    builders: str,
    jobs: int = 0,
    hook: Path | None = HOOK,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nix_build_argv(args, builders=builders, jobs=jobs, hook=hook),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )


def ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.split()


def closure(path: str) -> list[str]:
    out = subprocess.run(
        ["nix-store", "-q", "--requisites", path], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def outputs_of_graph(path: str, marker: str) -> list[str]:
    """The outputs of every derivation in `path`'s build graph whose name contains `marker`."""
    [drv] = derivers([path])
    drvs = [p for p in closure(drv) if p.endswith(".drv") and marker in p]
    out = subprocess.run(
        ["nix-store", "-q", "--outputs", *drvs], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def derivers(paths: Sequence[str]) -> list[str]:
    out = subprocess.run(
        ["nix-store", "-q", "--deriver", *paths], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def machines_file(
    farm_machines: Path, alias: Callable[[str], str], path: Path, names: Sequence[str]
) -> Path:
    """A machines file with the lines of `farm_machines` for builders `names`, in that order."""
    lines = farm_machines.read_text().splitlines()
    path.write_text(
        "".join(
            next(line for line in lines if line.startswith(f"ssh://{alias(n)} ")) + "\n"
            for n in names
        )
    )
    return path
