"""Commands as a farm client of a given Nix (`nixdist farm client`): what the tests of modern
Nix clients share. Importable as ``import clients`` (pytest's ``pythonpath`` has tests/)."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from nixrun import HANG_GUARD_S

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from nixdist.farm import Farm


#: A two-derivation DAG for client tests: `leaf` (printing "leaf log SALT"), then `top` (two
#: outputs, printing "remote log of top SALT"; `fail`: two error lines and exit 3; `big`: MiB
#: of random bytes in its dev output). `leaf` is an attribute too, to build it alone.
DRVS = """\
{ salt, fail ? false, big ? 0 }:
let
  leaf = derivation {
    name = "leaf-${salt}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo leaf log ${salt}; echo leaf ${salt} > $out" ];
  };
in derivation {
  name = "top-${salt}"; system = builtins.currentSystem; builder = "/bin/sh";
  outputs = [ "out" "dev" ];
  args = [ "-c" ''
    echo "remote log of top ${salt}"
    ${if fail then "echo 'first error line' >&2; echo '  second error line' >&2; exit 3" else ""}
    read x < ${leaf}; echo "$x top" > $out
    /bin/mkdir $dev; echo d > $dev/x; /bin/ln -s $out $dev/l
    ${if big > 0 then "/bin/dd if=/dev/urandom of=$dev/big bs=1M count=${toString big}" else ""}
  '' ];
} // { inherit leaf; }
"""


def client_env(farm: Farm, work: Path) -> dict[str, str]:
    """The farm's environment, with a state directory of the test's own."""
    env = {**os.environ, **farm.env(), "NIXDIST_STATE_DIR": str(work / "state")}
    env.pop("NIX_REMOTE_SYSTEMS", None)
    return env


def run_in_work(farm: Farm, argv: Sequence[str], work: Path) -> subprocess.CompletedProcess[str]:
    """`argv` in `work` with `client_env`, its output kept."""
    return subprocess.run(
        argv,
        env=client_env(farm, work),
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )


def run_client(
    farm: Farm, version: str, argv: Sequence[str], work: Path, *, daemon: bool = False
) -> subprocess.CompletedProcess[str]:
    """`argv` as a client of Nix `version` (with a nix-daemon in between with `daemon`)."""
    return run_in_work(farm, farm.client_argv(version, argv, daemon=daemon, cwd=work), work)


def client_hook(farm: Farm, version: str) -> str:
    """nixdist-hook inside the client of Nix `version` (one absolute path: every Nix)."""
    return str(farm.client_store_dir(version).parents[1] / "bin" / "nixdist-hook")


def own_hook(version: str) -> str:
    """Nix's own hook in the client's root filesystem (2.8: a program; later: `nix`'s)."""
    return "/usr/libexec/nix/build-remote" if version == "2.8" else "/usr/bin/nix __build-remote"
