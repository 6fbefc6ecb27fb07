"""A farm for one benchmark workload, and timed builds on it by each contender.

`FarmBench` brings up a local farm (`nixdist.farm.Farm`: real `sshd` builders, each with its own
Nix store) in a directory of its own, under an alias prefix unique to this process, so it never
meets a farm the user or a concurrent test runs. Both contenders build on that same farm with::

    NIX_SSHOPTS="-F <farm>/ssh_config" nix-build <drvs> --no-out-link -j0 \\
        --option substituters '' --builders @<farm>/machines --option build-hook <hook>

where <hook> is Nix 2.8's ``/usr/libexec/nix/build-remote`` ("build-remote") or the venv's
``nixdist-hook`` ("nixdist"). Nothing else differs between them: same farm, same Nix settings
(Nix's defaults, e.g. ``build-poll-interval`` 5), same derivation shapes with a fresh salt per
run, instantiated before the clock starts. The same farm and derivations also serve
``nixdist build`` ("nixdist-build", "nixdist-build-all" with ``--fetch-all``) and a local
``nix-build`` ("local", the floor): bench/contenders.py has every contender's command and
promise. nixdist keeps one ``NIXDIST_STATE_DIR`` per farm for
the whole benchmark, as a user's machine does: its ssh control masters are started by the first
nixdist build on each builder and reused afterwards (they outlive hook processes by design);
``nixdist build`` keeps one of its own, the same way.
bench/hook_vs_build_remote.py times both states, under two more names of nixdist:
"nixdist-cold" starts afresh, with a new, empty state directory (no control master yet; the
previous directory's masters are stopped first, untimed), and "nixdist-warm" builds with the
state directory as it is, its masters alive.

With a `client_nix` version (``--client-nix 2.34``) every Nix command of the client side
(nix-instantiate, nix-build, nix-store --add, the queries and deletions of the client's store)
runs as a client of that Nix, through ``Farm.client_argv``: chrooted in its Debian root
filesystem with a store of its own under the farm directory. Then "build-remote" is that
version's own hook (``/usr/bin/nix __build-remote`` from 2.17 on, `common.nix_own_hook`) and
"nixdist" the client's ``nixdist-hook`` (our hook under the root filesystem's python3). Both
timed builds pay the same ~0.1 s for entering the chroot. The builders are unchanged.

After every timed build (untimed from here on) `FarmBench.check` reads what happened from the
stores themselves: how many outputs of the derivations in the build's closure are valid
locally (and of the outputs asked for, those of the .drv paths given), and which builder built
each one (a path a builder built itself is "ultimate" in its database); `run_problems` holds
that to what the contender promises (`contenders.Promise`). A workload may measure more before
the paths go (W6: the bytes that went through the client, bench/traffic.py). Then
`FarmBench.forget` deletes the run's paths locally and empties the builders'
stores, so the next run starts with nothing valid there.

With a `profile_dir`, nixdist's hook runs under cProfile instead (a small wrapper script), and
every hook process writes ``hook-<pid>.prof`` there: `summarise_profiles` adds them up. This is
for finding where the time goes, not for timing (profiling slows the hook down).

Everything is removed at the end (`FarmBench.teardown`, also on Ctrl-C): ssh masters, the farm
(stopped, directory deleted), every local store path the runs created, and the farm's slot-lock
files in Nix's ``current-load`` directory (a farm client's store and current-load directory are
in the farm directory).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pstats
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from common import NIXDIST_CLI, NIXDIST_HOOK, PYTHON, nix_own_hook
from contenders import (
    BUILD_REMOTE,
    LOCAL,
    NIXDIST,
    NIXDIST_BUILD_ALL,
    NIXDIST_BUILDS,
    NIXDIST_COLD,
    NIXDIST_HOOKS,
    PROMISES,
    local_build_argv,
    nixdist_build_argv,
)

from nixdist.farm import Farm
from nixdist.farm.builds import nix_build_argv
from nixdist.farm.client import client_dir, source_dirs
from nixdist.state.paths import ssh_dir
from nixdist.state.slots import default_current_load_dir, escape_uri
from nixdist.transport.openssh import ControlMasters, target_for_machine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from nixdist.farm import BuilderSpec

#: The two hooks compared, in the order of even rounds (odd rounds flip it).
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST)
#: A guard against a hang, never a performance limit.
HANG_GUARD_S: Final = 900


def workload_names(base: str, scheme: str) -> tuple[str, str]:
    """A workload's key and label: ``w1`` and ``W1``, or ``w1-ng`` and ``W1 ssh-ng`` when its
    builders are listed as ``ssh-ng://``."""
    if scheme == "ssh":
        return base, base.upper()
    return f"{base}-ng", f"{base.upper()} {scheme}"


def profile_dir(directory: str | None, tag: str) -> Path | None:
    """Where workload `tag` keeps its hook profiles, when profiling was asked for."""
    return None if directory is None else Path(directory) / tag


def round_order(rnd: int, names: Sequence[str] = CONTENDERS) -> list[str]:
    """The contenders of round `rnd`: as given in even rounds, reversed in odd ones."""
    return list(names) if rnd % 2 == 0 else list(reversed(names))


Run: TypeAlias = subprocess.CompletedProcess[str]


def run_cmd(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = HANG_GUARD_S
) -> Run:
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=timeout, env=env
    )


def words(result: Run, what: str) -> list[str]:
    """The whitespace-separated words of a command's stdout; raises if it failed."""
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout.split()


@dataclass(slots=True, kw_only=True)
class BuildRun:
    """One timed nix-build of one contender, and what the stores say about it afterwards."""

    workload: str
    contender: str
    round: int
    ok: bool
    seconds: float
    derivations: int
    promise: str = ""  # what the contender promises, `contenders.Promise.describe`
    outputs: int = 0  # of every derivation in the build's closure
    valid_locally: int = 0
    built_remotely: int = 0  # outputs built by exactly one farm builder
    asked: int = 0  # outputs of the .drv paths given
    asked_valid: int = 0  # ... valid locally
    placements: dict[str, int] = field(default_factory=dict)  # builder -> outputs it built
    traffic: dict[str, int] = field(default_factory=dict)  # W6: bytes, bench/traffic.py
    error: str = ""


def run_problems(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Runs (`BuildRun`s as JSON) that failed or broke their contender's promise."""
    problems: list[str] = []
    for run in runs:
        contender = str(run.get("contender"))
        name = f"{contender} round {int(run.get('round', 0)) + 1}"
        promise = PROMISES.get(contender)
        if promise is None:
            problems.append(f"{name}: unknown contender")
            continue
        problems += [f"{name}: {problem}" for problem in promise.problems(run)]
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    outputs: int
    valid_locally: int
    built_remotely: int
    asked: int
    asked_valid: int
    placements: dict[str, int]


class FarmBench:
    """One farm, its generated files, and every store path the runs made."""

    def __init__(
        self,
        base: Path,
        tag: str,
        *,
        specs: Sequence[BuilderSpec],
        profile_dir: Path | None = None,
        client_nix: str | None = None,
    ) -> None:
        self.base = base / tag
        self.profile_dir = profile_dir
        self.client_nix = client_nix  # None: the host's Nix, else a farm client's version
        self.specs = tuple(specs)
        self.farm = Farm(self.base / "farm", alias_prefix=f"nxb{os.getpid()}{tag}-")
        self.state_dirs = [self.base / "nixdist-state"]  # the last is nixdist's now
        self.build_state_dir = self.base / "nixdist-build-state"  # nixdist build's, kept
        self.exprs = self.base / "exprs"
        self.created: set[str] = set()  # local store paths to delete at the end
        self.keep: set[str] = set()  # local inputs shared by every run: deleted at the end only
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.pop("NIX_REMOTE_SYSTEMS", None)
        self.env = env

    # ------------------------------------------------------------------ set-up

    def up(self) -> None:
        self.base.mkdir(parents=True)
        self.exprs.mkdir()
        self.farm.up(self.specs)
        self.env.update(self.farm.env())

    def write_expr(self, name: str, text: str) -> Path:
        path = self.exprs / name
        path.write_text(text)
        return path

    def nix_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv`, a Nix command of the client side, as the client runs it: as is on the host,
        else through ``Farm.client_argv`` (in the bench's directory, which it sees as is)."""
        if self.client_nix is None:
            return list(argv)
        return self.farm.client_argv(self.client_nix, argv, cwd=self.base)

    def run_nix(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Run:
        """Run a Nix command of the client side (`nix_argv`), with the farm's environment."""
        return run_cmd(self.nix_argv(argv), env=self.env if env is None else env)

    def host_path(self, store_path: str) -> str:
        """Where this machine sees a path of the client's store (a farm client's is a directory
        of the farm, `Farm.client_store_dir`)."""
        if self.client_nix is None:
            return store_path
        return str(self.farm.client_store_dir(self.client_nix) / Path(store_path).name)

    @property
    def slots(self) -> int:
        """The farm's build slots: the local floor's ``-j``."""
        return sum(spec.max_jobs for spec in self.specs)

    @property
    def state_dir(self) -> Path:
        """nixdist's ``NIXDIST_STATE_DIR`` now."""
        return self.state_dirs[-1]

    def fresh_state_dir(self) -> Path:
        """Start nixdist afresh ("nixdist-cold"): stop the masters of its state directory and
        give it a new one, empty."""
        self.stop_masters()
        self.state_dirs.append(self.base / f"nixdist-state-{len(self.state_dirs)}")
        return self.state_dir

    def hook_env(self, contender: str) -> tuple[Path | str, dict[str, str]]:
        """The hook (the ``build-hook`` setting) and the extra environment of `contender`."""
        if contender == BUILD_REMOTE:
            return nix_own_hook(self.client_nix), {}
        if contender in NIXDIST_HOOKS:
            if self.profile_dir is not None:
                hook = self._profiling_hook()
            elif self.client_nix is not None:  # written by client_argv; an absolute path for 2.8
                hook = client_dir(self.farm.directory, self.client_nix) / "bin" / "nixdist-hook"
            else:
                hook = NIXDIST_HOOK
            return hook, {"NIXDIST_STATE_DIR": str(self.state_dir)}
        raise ValueError(f"unknown contender {contender!r}")

    def _profiling_hook(self) -> Path:
        """A hook program that runs nixdist-hook's main under cProfile (see the docstring).

        In a farm client it runs under the root filesystem's python3 on the checkout's src, as
        the client's own nixdist-hook does."""
        assert self.profile_dir is not None  # noqa: S101 - only called with one
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        wrapper = self.base / "nixdist-hook-profiled"
        python, sys_path = PYTHON, ""
        if self.client_nix is not None:
            src = str(source_dirs()[0])
            python, sys_path = Path("/usr/bin/python3"), f"sys.path.insert(0, {src!r})\n"
        if not wrapper.exists():
            wrapper.write_text(
                f"#!{python}\n"
                "import cProfile, os, sys\n"
                f"{sys_path}"
                "from nixdist.hook.main import main\n"
                "profile = cProfile.Profile()\n"
                "profile.enable()\n"
                "try:\n"
                "    code = main()\n"
                "finally:\n"
                "    profile.disable()\n"
                f"    profile.dump_stats(os.path.join({str(self.profile_dir)!r},"
                " f'hook-{os.getpid()}.prof'))\n"
                "sys.exit(code)\n"
            )
            wrapper.chmod(0o755)
        return wrapper

    # ------------------------------------------------------------------ runs

    def instantiate(self, expr: Path, salt: str, **args: str | int) -> tuple[str, ...]:
        """``nix-instantiate`` the expression (untimed): its derivations, recorded as ours."""
        argv = ["nix-instantiate", str(expr), "--argstr", "salt", salt]
        for name, value in args.items():
            if isinstance(value, int):
                argv += ["--arg", name, str(value)]
            else:
                argv += ["--argstr", name, value]
        drvs = tuple(words(self.run_nix(argv), "nix-instantiate"))
        self.created.update(drvs)
        return drvs

    def command(
        self, drvs: Sequence[str], contender: str, *, extra: Sequence[str] = ()
    ) -> tuple[list[str], dict[str, str]]:
        """`contender`'s command building `drvs`, and its environment (bench/contenders.py).

        `extra` goes to nix-build only (``--nix-option``), not to nixdist build."""
        if contender in NIXDIST_BUILDS:
            # A farm client runs the `nixdist` beside its Nix (nixdist.farm.client).
            program = str(NIXDIST_CLI) if self.client_nix is None else "nixdist"
            argv = nixdist_build_argv(
                drvs,
                machines=self.farm.machines_file,
                fetch_all=contender == NIXDIST_BUILD_ALL,
                program=program,
            )
            env = {**self.env, "NIXDIST_STATE_DIR": str(self.build_state_dir)}
            return self.nix_argv(argv), env
        if contender == LOCAL:
            return self.nix_argv(local_build_argv(drvs, jobs=self.slots, extra=extra)), self.env
        if contender == NIXDIST_COLD:
            self.fresh_state_dir()
        hook, extra_env = self.hook_env(contender)
        argv = nix_build_argv(drvs, builders=f"@{self.farm.machines_file}", hook=hook, extra=extra)
        return self.nix_argv(argv), {**self.env, **extra_env}

    def build(
        self, drvs: Sequence[str], contender: str, *, extra: Sequence[str] = ()
    ) -> tuple[float, Run]:
        """The timed part: `contender` builds `drvs` (`command`)."""
        argv, env = self.command(drvs, contender, extra=extra)
        start = time.perf_counter()
        result = run_cmd(argv, env=env)
        return time.perf_counter() - start, result

    def outputs(self, drvs: Sequence[str]) -> list[str]:
        return words(
            self.run_nix(["nix-store", "-q", "--outputs", *drvs]), "nix-store -q --outputs"
        )

    def valid_paths(self, paths: Iterable[str]) -> list[str]:
        """Those of `paths` that are valid in the client's store, sorted."""
        wanted = sorted(set(paths))
        if not wanted:
            return []
        result = self.run_nix(["nix-store", "--check-validity", "--print-invalid", *wanted])
        invalid = set(result.stdout.split())
        return [p for p in wanted if p not in invalid]

    def closure(self, roots: Iterable[str]) -> list[str]:
        """The closure of those of `roots` that are valid in the client's store."""
        valid = self.valid_paths(roots)
        if not valid:
            return []
        return words(self.run_nix(["nix-store", "-qR", *valid]), "nix-store -qR")

    def check(self, drvs: Sequence[str]) -> Checked:
        """What the stores say about the outputs of every derivation a build of `drvs` needed:
        valid here, and where each one was built; and how many of the outputs of `drvs`
        themselves (those asked for) are valid here."""
        needed = [p for p in self.closure(drvs) if p.endswith(".drv")]
        outputs = self.outputs(needed) if needed else []
        asked = self.outputs(drvs)
        where = self.farm.where_built(outputs)
        placements = collections.Counter(b[0] for b in where.values() if len(b) == 1)
        return Checked(
            outputs=len(outputs),
            valid_locally=len(self.valid_paths(outputs)),
            built_remotely=sum(1 for b in where.values() if len(b) == 1),
            asked=len(asked),
            asked_valid=len(self.valid_paths(asked)),
            placements=dict(sorted(placements.items())),
        )

    def timed_run(
        self,
        *,
        workload: str,
        contender: str,
        rnd: int,
        drvs: Sequence[str],
        derivations: int,
        extra: Sequence[str] = (),
        measure: Callable[[Sequence[str]], dict[str, int]] | None = None,
    ) -> BuildRun:
        """`build`, then `check`, `measure` (given the .drv paths) and `forget` (untimed)."""
        seconds, result = self.build(drvs, contender, extra=extra)
        run = BuildRun(
            workload=workload,
            contender=contender,
            round=rnd,
            ok=result.returncode == 0,
            seconds=seconds,
            derivations=derivations,
            promise=PROMISES[contender].describe(),
            error="" if result.returncode == 0 else result.stderr[-3000:],
        )
        checked = self.check(drvs)
        run.outputs = checked.outputs
        run.valid_locally = checked.valid_locally
        run.built_remotely = checked.built_remotely
        run.asked = checked.asked
        run.asked_valid = checked.asked_valid
        run.placements = checked.placements
        if measure is not None:
            run.traffic = measure(drvs)
        self.forget(drvs)
        return run

    # ------------------------------------------------------------------ clean-up

    def wipe_builders(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Delete every valid path in the builders' stores; returns what is left per builder."""
        left: dict[str, int] = {}
        for name in self.farm.names() if names is None else names:
            there = self.farm.builder_store_paths(name)
            if there:
                self.farm.run_in(name, ["nix-store", "--delete", *there], check=False)
                there = self.farm.builder_store_paths(name)
            left[name] = len(there)
        return left

    def forget(self, drvs: Sequence[str]) -> None:
        """Delete a run's paths locally, and everything on the builders."""
        self.wipe_builders()
        self.delete_local(self.expand(drvs) - self.keep)

    def expand(self, roots: Iterable[str]) -> set[str]:
        """`roots` (derivations and sources of ours), their closures and every output."""
        closure = self.closure(roots)
        drvs = [p for p in closure if p.endswith(".drv")]
        outputs = self.outputs(drvs) if drvs else []
        return set(closure) | set(outputs)

    def delete_local(self, paths: set[str]) -> None:
        """``nix-store --delete`` those of `paths` that are valid; a failure is only reported."""
        local = self.valid_paths(paths)
        if local:
            result = self.run_nix(["nix-store", "--delete", *local])
            if result.returncode != 0:
                print(
                    f"warning: could not delete {len(local)} store paths: "
                    f"{result.stderr.strip()[-500:]}"
                )
                return
        self.created.difference_update(paths)

    def stop_masters(self, state_dir: Path | None = None) -> None:
        """Stop the ssh control masters of nixdist's state directory (now, or `state_dir`)."""
        state_dir = self.state_dir if state_dir is None else state_dir
        masters = ControlMasters(ssh_dir(state_dir))
        for machine in self.farm.machines():
            target = target_for_machine(machine, self.env)
            masters.stop_master(target)
            sock = masters.socket_path(target)
            if not sock.is_relative_to(state_dir):  # the short-path fallback under /tmp
                shutil.rmtree(sock.parent, ignore_errors=True)

    def remove_slot_locks(self) -> None:
        """The farm's slot-lock files in the host's Nix ``current-load`` directory."""
        current_load = default_current_load_dir(environ=self.env)
        for spec in self.specs:
            uri = escape_uri(f"{spec.scheme}://{self.farm.alias(spec.name)}")
            for lock in current_load.glob(f"{uri}[-.]*"):
                lock.unlink(missing_ok=True)

    def teardown(self) -> None:
        """Remove everything this farm and its runs made; never raises.

        A farm client's store and current-load directory are in the farm directory, removed
        with it; the host's are cleaned path by path."""
        host = self.client_nix is None
        if self.farm.state_file.exists():
            for state_dir in [*self.state_dirs, self.build_state_dir]:
                with contextlib.suppress(Exception):
                    self.stop_masters(state_dir)
            if host:
                with contextlib.suppress(Exception):
                    self.remove_slot_locks()
            with contextlib.suppress(Exception):
                self.farm.down()
        if host:
            with contextlib.suppress(Exception):
                self.delete_local(self.expand(self.created | self.keep))
        shutil.rmtree(self.base, ignore_errors=True)


def summarise_profiles(directory: Path, *, top: int = 25, sort: str = "cumulative") -> str:
    """The hook profiles in `directory` added up, as pstats prints them (`top` lines)."""
    files = sorted(str(p) for p in directory.glob("hook-*.prof"))
    if not files:
        return f"no hook profiles in {directory}"
    out = io.StringIO()
    stats = pstats.Stats(*files, stream=out)
    stats.files = []  # type: ignore[attr-defined]  # else it prints every file's name first
    stats.sort_stats(sort).print_stats(top)
    return f"{len(files)} hook processes\n" + out.getvalue()
