"""Who builds in a farm workload, how it is started, and what it promises afterwards.

The contenders of W1-W3 and W6 (`farmbench.FarmBench.build` starts them, `FarmBench.check`
reads the stores afterwards, `run_problems` holds each run to its contender's promise):

==================  ==================================================  ==========================
name                command (timed)                                     promise
==================  ==================================================  ==========================
build-remote        ``nix-build <drvs> -j0 --builders @<farm>/machines  every output of the build
                    --option build-hook <Nix's own hook>``              valid here, each built by
                                                                        one farm builder
nixdist             the same with ``--option build-hook nixdist-hook``  the same
(nixdist-hook)      (also nixdist-cold / nixdist-warm, see farmbench)
nixdist-build       ``nixdist build <drvs> --machines <farm>/machines   the outputs asked for
                    -j0 --no-out-link``                                 valid here; every output
                                                                        built by one farm builder
nixdist-build-all   the same with ``--fetch-all``                       as the hooks
local               ``nix-build <drvs> -j<farm's slots> --builders ''   every output valid here,
                    --option sandbox false``                            none built on the farm
==================  ==================================================  ==========================

Every nix-build also gets ``--no-out-link --option substituters ''``
(`nixdist.farm.builds.nix_build_argv`). The contender "nixdist" is the hook: its name is kept
from before nixdist build existed, so that earlier results files read the same; tables call it
"nixdist-hook". ``nixdist build`` keeps a ``NIXDIST_STATE_DIR`` of its own for the whole
benchmark, as the hook does (masters started by its first run, reused afterwards). It runs with
the host's Nix only: a farm client (``--client-nix``) has a ``nixdist-hook`` but no ``nixdist``,
so with one the workloads leave nixdist build out (`available`; also over ``ssh-ng://``).

"The outputs asked for" are the outputs of the .drv paths given. In W1-W3 those are all the
derivations there are (each workload's expression is a list of all of them), so nixdist-build
and nixdist-build-all make the same outputs valid here; only W6 asks for one output of many.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from common import NIXDIST_CLI

from nixdist.farm.builds import nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

BUILD_REMOTE: Final = "build-remote"
NIXDIST: Final = "nixdist"  # the hook, nixdist-hook
#: nixdist-hook with a new, empty state directory (no ssh control master yet), and again with
#: the state directory as it is (its masters alive): bench/hook_vs_build_remote.py.
NIXDIST_COLD: Final = "nixdist-cold"
NIXDIST_WARM: Final = "nixdist-warm"
NIXDIST_BUILD: Final = "nixdist-build"
NIXDIST_BUILD_ALL: Final = "nixdist-build-all"
LOCAL: Final = "local"

HOOKS: Final = frozenset({BUILD_REMOTE, NIXDIST, NIXDIST_COLD, NIXDIST_WARM})
NIXDIST_HOOKS: Final = frozenset({NIXDIST, NIXDIST_COLD, NIXDIST_WARM})
NIXDIST_BUILDS: Final = frozenset({NIXDIST_BUILD, NIXDIST_BUILD_ALL})

#: How tables and log lines name the contenders.
LABELS: Final = {
    BUILD_REMOTE: "build-remote",
    NIXDIST: "nixdist-hook",
    NIXDIST_BUILD: "nixdist build",
    NIXDIST_BUILD_ALL: "nixdist build --fetch-all",
    LOCAL: "local nix-build",
}


class Fetched(StrEnum):
    """Which outputs a contender makes valid in the local store."""

    ALL = "every output of the build"
    ASKED = "the outputs asked for"


class Where(StrEnum):
    """Where a contender builds."""

    FARM = "each built by one farm builder"
    HERE = "none built on the farm"


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    """What a run of a contender must have left behind; anything else is a problem."""

    fetched: Fetched
    where: Where

    def describe(self) -> str:
        return f"{self.fetched} valid locally, every output {self.where}"

    def problems(self, run: Mapping[str, object]) -> list[str]:
        """What `run` (a `farmbench.BuildRun` as JSON) left that breaks the promise."""
        if not run.get("ok"):
            return ["the build failed"]
        outputs, remote = run.get("outputs"), run.get("built_remotely")
        found: list[str] = []
        if self.where is Where.FARM and remote != outputs:
            found.append(f"{remote} of {outputs} outputs built remotely")
        if self.where is Where.HERE and remote != 0:
            found.append(f"{remote} of {outputs} outputs built on the farm")
        if self.fetched is Fetched.ALL and run.get("valid_locally") != outputs:
            found.append(f"{run.get('valid_locally')} of {outputs} outputs valid locally")
        if self.fetched is Fetched.ASKED and run.get("asked_valid") != run.get("asked"):
            found.append(
                f"{run.get('asked_valid')} of the {run.get('asked')} outputs asked for valid"
                " locally"
            )
        return found


_HOOK_PROMISE: Final = Promise(fetched=Fetched.ALL, where=Where.FARM)
PROMISES: Final = {
    **dict.fromkeys(HOOKS, _HOOK_PROMISE),
    NIXDIST_BUILD_ALL: _HOOK_PROMISE,
    NIXDIST_BUILD: Promise(fetched=Fetched.ASKED, where=Where.FARM),
    LOCAL: Promise(fetched=Fetched.ALL, where=Where.HERE),
}


def label(contender: str) -> str:
    return LABELS.get(contender, contender)


def available(names: Sequence[str], client_nix: str | None, scheme: str = "ssh") -> tuple[str, ...]:
    """Those of `names` that run with this client and these builders: all of them (nixdist
    build as a farm client of another Nix runs that client's `nixdist`)."""
    del client_nix, scheme
    return tuple(names)


def nixdist_build_argv(
    drvs: Sequence[str], *, machines: Path, fetch_all: bool, program: str = str(NIXDIST_CLI)
) -> list[str]:
    """``nixdist build`` of the .drv paths, every build on the farm, no GC root."""
    argv = [program, "build", *drvs, "--machines", str(machines), "-j0", "--no-out-link"]
    return [*argv, "--fetch-all"] if fetch_all else argv


def local_build_argv(drvs: Sequence[str], *, jobs: int, extra: Sequence[str] = ()) -> list[str]:
    """The local floor: ``nix-build -j<jobs>`` of the same derivations on this machine alone."""
    floor = ["--option", "sandbox", "false", *extra]
    return nix_build_argv(drvs, builders="", hook=None, jobs=jobs, extra=floor)
