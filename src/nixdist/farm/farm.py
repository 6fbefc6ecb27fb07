"""The local farm: N builder hosts on one Linux machine, each an `sshd` in a mount namespace.

Layout of a farm directory (default ``/var/lib/nixdist/farm``, or ``$NIXDIST_FARM_DIR``)::

    state.json            builders, specs, ports, sshd pids, mount-namespace inodes
    machines              Nix machines file, one 8-field line per builder
    ssh_config            one ``Host <prefix><name>`` block per builder
    known_hosts           the builders' host keys, under their aliases
    client_key(.pub)      the ed25519 key clients log in with (root, key only)
    lock                  flock'ed while the farm is changed
    clients/<version>/    ``nixdist farm client --nix <version>``: its nix/, etc-nix/, bin/
                          (see `nixdist.farm.client`)
    builders/<name>/
        nix/              the builder's /nix (its own store and database)
        etc-nix/          its /etc/nix: nix.conf, nixdist-builder, nixdist-speed,
                          nix-daemon.log (a builder with ``user=``: its nix-daemon's output)
        etc-ssh/          its /etc/ssh: sshd_config, host key, authorized_keys, sshd.log
        home/             its /root
        tmp/              its /tmp
        stage/            (a builder with ``nix=``) where its namespace mounts its root
        homes/<user>/     (a builder with ``user=``) its /home: the user's home
        accounts/         (a builder with ``user=``) its /etc/passwd and /etc/group
        sshd.pid          written by the launcher, the pid of the builder's sshd
        launch.log        stdout/stderr of the launcher and of sshd

How a builder's processes are started, found, entered and killed (its mount namespace, a
chroot for a builder with a Nix version of its own, a nix-daemon for one with a user) is
`nixdist.farm.builders`.

Ports are chosen once (a free loopback port) and kept across stop/start and up/down; a new one
is chosen only when the old one is taken by something else at start.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.farm import client, launch, procs, render
from nixdist.farm.builders import NOISE_MARKER, Builders, BuilderState, BuilderStatus
from nixdist.farm.errors import FarmError
from nixdist.farm.layout import atomic_write, check_host, prepare_builder, user_home, valid_paths
from nixdist.farm.releases import KNOWN_VERSIONS
from nixdist.farm.rootfs import ensure_rootfs_many
from nixdist.farm.spec import (
    DEFAULT_ALIAS_PREFIX,
    BuilderSpec,
    check_alias_prefix,
    plain_specs,
)
from nixdist.farm.sshinclude import add_ssh_include, remove_ssh_include
from nixdist.farm.statefile import BuilderRecord, FarmState, encode_state, load_state
from nixdist.model.machines import Machine

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable, Iterator, Mapping, Sequence

DEFAULT_FARM_DIR: Final = Path("/var/lib/nixdist/farm")
FARM_DIR_ENV: Final = "NIXDIST_FARM_DIR"
DEFAULT_BUILDER_COUNT: Final = 2
#: What `Farm.hide_proc` covers.
_HIDDEN_PROC: Final = ("/proc/loadavg", "/proc/meminfo")


def _restart_needed(old: BuilderSpec, new: BuilderSpec) -> bool:
    """Whether a running builder must restart for `new`: another root filesystem, accounts,
    or a nix-daemon that must read its trusted-users again."""
    return (old.nix, old.user, old.trusted) != (new.nix, new.user, new.trusted)


def default_farm_dir() -> Path:
    env = os.environ.get(FARM_DIR_ENV)
    return Path(env) if env else DEFAULT_FARM_DIR


class Farm:
    """A farm directory and the builders it describes. Cheap to construct; does no I/O."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        alias_prefix: str | None = None,
        sshd: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory if directory is not None else default_farm_dir())
        self.directory = Path(os.path.abspath(self.directory))  # noqa: PTH100 - keep symlinks
        if alias_prefix is not None:
            check_alias_prefix(alias_prefix)
        self._alias_prefix_arg = alias_prefix
        self._builders = Builders(
            directory=self.directory,
            sshd=sshd or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin"),
            start_timeout=start_timeout,
        )
        self.machines_file = self.directory / "machines"
        self.ssh_config = self.directory / "ssh_config"
        self.known_hosts = self.directory / "known_hosts"
        self.client_key = self.directory / "client_key"
        self.state_file = self.directory / "state.json"
        self._lock_file = self.directory / "lock"

    def __repr__(self) -> str:
        return f"Farm({str(self.directory)!r})"

    # ---------------------------------------------------------------- paths and names

    @property
    def sshd(self) -> str | None:
        """The host's sshd, which builders without a Nix version of their own run."""
        return self._builders.sshd

    @property
    def start_timeout(self) -> float:
        """Seconds a builder may take to start listening."""
        return self._builders.start_timeout

    @property
    def nix_sshopts(self) -> str:
        """The ``NIX_SSHOPTS`` value that makes Nix's ssh use the farm's config."""
        return f"-F {self.ssh_config}"

    def env(self) -> dict[str, str]:
        """Environment additions for a Nix client that uses the farm."""
        return {"NIX_SSHOPTS": self.nix_sshopts}

    @property
    def alias_prefix(self) -> str:
        return self._load().alias_prefix

    def alias(self, name: str) -> str:
        """The ssh alias (and store URI host) of builder `name`, e.g. ``nixdist-b1``."""
        return self.alias_prefix + name

    def builder_dir(self, name: str) -> Path:
        return self._builders.builder_dir(name)

    def store_dir(self, name: str) -> Path:
        """The physical directory that builder `name` sees as ``/nix/store``."""
        return self.builder_dir(name) / "nix" / "store"

    def sshd_log(self, name: str) -> Path:
        return self._builders.sshd_log(name)

    def ssh_argv(self, name: str) -> list[str]:
        """``ssh -F <farm>/ssh_config <alias>``: append the remote command."""
        return ["ssh", "-F", str(self.ssh_config), self.alias(name)]

    # ---------------------------------------------------------------- commands

    def up(self, specs: Sequence[BuilderSpec] | None = None) -> tuple[BuilderStatus, ...]:
        """Make the farm consist of `specs` and have every builder running.

        None keeps the builders the farm has (two plain ones for a new farm). Running builders
        are left alone (their nix.conf is rewritten if their spec changed; they are restarted
        if their Nix version changed); stopped or new ones are started; builders not in
        `specs` are stopped and their directories removed. Frozen builders stay frozen (see
        `heal`).
        """
        check_host(self.directory, self.sshd)
        self._ensure_rootfs(specs)
        with self._locked(create=True):
            state = self._load()
            if self._alias_prefix_arg is not None:
                state.alias_prefix = self._alias_prefix_arg
            wanted = (
                list(specs)
                if specs is not None
                else [r.spec for r in state.records] or list(plain_specs(DEFAULT_BUILDER_COUNT))
            )
            self._ensure_rootfs(wanted)  # the farm's own builders when `specs` is None
            names = [s.name for s in wanted]
            if len(set(names)) != len(names):
                raise ConfigError(f"builder names must be unique: {', '.join(names)}")
            self._ensure_client_key()
            old = {r.spec.name: r for r in state.records}
            for name, record in old.items():
                if name not in names:
                    self._builders.kill(record)
                    shutil.rmtree(self.builder_dir(name), ignore_errors=True)
            used = {old[n].port for n in names if n in old}
            records: list[BuilderRecord] = []
            for spec in wanted:
                previous = old.get(spec.name)
                if previous is None:
                    port = launch.free_port(used)
                    used.add(port)
                    record = BuilderRecord(spec=spec, port=port)
                elif _restart_needed(previous.spec, spec):
                    # Another Nix: restart it in the other root filesystem (same store;
                    # every Nix from 2.8 to 2.34 uses store schema 10). Another user or
                    # trust: new accounts, a new nix-daemon.
                    record = replace(self._builders.kill(previous), spec=spec)
                else:
                    record = replace(previous, spec=spec)
                prepare_builder(self.builder_dir(record.spec.name), record, self.client_key)
                records.append(record)
            state.records = records
            self._save(state)
            for i, record in enumerate(state.records):
                if self._builders.live_pid(record) is None:
                    state.records[i] = self._start(state, record)
                    self._save(state)
            return self._statuses(state)

    def down(self) -> None:
        """Stop every builder: no process of the farm is left running afterwards."""
        if not self.state_file.exists():
            return
        with self._locked():
            state = self._load()
            for i, record in enumerate(state.records):
                state.records[i] = self._builders.kill(record)
            self._save_if_exists(state)

    def reset(self, *, ssh_config: Path | None = None) -> None:
        """`down`, then empty every builder's store, /tmp and home; remove the ssh include.

        Keys, ports and specs stay, so the next `up` brings back the same builders, empty.
        The stores of `client_argv` clients are emptied too.
        """
        self.down()
        self.remove_ssh_include(ssh_config)
        if not self.state_file.exists():
            return
        with self._locked():
            for version in KNOWN_VERSIONS:
                client.reset_client(self.directory, version)
            for record in self._load().records:
                base = self.builder_dir(record.spec.name)
                for sub in ("nix", "tmp", "home", "homes"):
                    shutil.rmtree(base / sub, ignore_errors=True)
                    (base / sub).mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> BuilderStatus:
        """Start builder `name` if it is not running (same port, same host key)."""
        check_host(self.directory, self.sshd)
        with self._locked():
            state = self._load()
            i = state.index(name)
            self._ensure_rootfs([state.records[i].spec])
            if self._builders.live_pid(state.records[i]) is None:
                prepare_builder(
                    self.builder_dir(state.records[i].spec.name), state.records[i], self.client_key
                )
                state.records[i] = self._start(state, state.records[i])
                self._save(state)
            return self._status(state, state.records[i])

    def stop(self, name: str) -> None:
        """Kill builder `name`: its sshd, every session and every build (SIGKILL)."""
        with self._locked():
            state = self._load()
            i = state.index(name)
            state.records[i] = self._builders.kill(state.records[i])
            self._save(state)

    def freeze(self, name: str) -> list[int]:
        """SIGSTOP every process of builder `name`; returns their pids.

        New connections are then accepted by the kernel but never answered.
        """
        with self._locked():
            record = self._running_record(name)
            return procs.stop_all(lambda: self._builders.pids(record))

    def thaw(self, name: str) -> None:
        """SIGCONT every process of builder `name`."""
        with self._locked():
            record = self._running_record(name)
            procs.continue_all(lambda: self._builders.pids(record))

    def set_noisy(self, name: str, *, noisy: bool) -> None:
        """Make root's shell on builder `name` print a line on stdout for every new session.

        That is what breaks ``nix-store --serve`` on real machines with a chatty ``.bashrc``.
        The builder's user, if it has one, gets the same ``.bashrc``.
        """
        with self._locked():
            spec = self._load().record(name).spec
            homes = [self.builder_dir(name) / "home"]
            if spec.user is not None:
                homes.append(user_home(self.builder_dir(name), spec.user))
            for home in homes:
                bashrc = home / ".bashrc"
                if noisy:
                    home.mkdir(parents=True, exist_ok=True)
                    bashrc.write_text(f"{NOISE_MARKER}\necho 'welcome to farm builder {name}'\n")
                else:
                    bashrc.unlink(missing_ok=True)

    def hide_proc(self, name: str, *, hidden: bool) -> None:
        """Cover (or uncover) ``/proc/loadavg`` and ``/proc/meminfo`` on running builder `name`
        with empty files: what a builder without Linux's /proc (macOS, the BSDs) shows a
        Linux-only load probe."""
        for path in _HIDDEN_PROC:
            argv = ["mount", "--bind", "/dev/null", path] if hidden else ["umount", path]
            self.run_in(name, argv, check=hidden)

    def heal(self) -> tuple[BuilderStatus, ...]:
        """Undo every fault switch: thaw frozen builders, start stopped ones, silence shells,
        uncover /proc."""
        if not self.state_file.exists():
            raise FarmError(f"no farm in {self.directory} (run: nixdist farm up)")
        for status in self.status():
            if status.noisy:
                self.set_noisy(status.name, noisy=False)
            if status.state is BuilderState.FROZEN:
                self.thaw(status.name)
            if status.state is BuilderState.RUNNING:
                self.hide_proc(status.name, hidden=False)
        return self.up()

    def status(self) -> tuple[BuilderStatus, ...]:
        return self._statuses(self._load())

    def builder_status(self, name: str) -> BuilderStatus:
        state = self._load()
        return self._status(state, state.record(name))

    def names(self) -> tuple[str, ...]:
        return tuple(r.spec.name for r in self._load().records)

    def machines(self) -> tuple[Machine, ...]:
        """The machines file's lines as values, in file order."""
        state = self._load()
        out: list[Machine] = []
        for record in state.records:
            spec = record.spec
            out.append(
                Machine(
                    uri=render.store_uri(spec, alias=state.alias_prefix + spec.name),
                    systems=spec.systems,
                    ssh_key=str(self.client_key),
                    max_jobs=spec.max_jobs,
                    speed_factor=float(spec.speed_factor),
                    supported_features=spec.supported_features,
                    mandatory_features=spec.mandatory_features,
                    public_host_key=base64.b64encode(
                        self._host_key_line(spec.name).encode()
                    ).decode(),
                    source=f"{self.machines_file}:{len(out) + 2}",
                )
            )
        return tuple(out)

    def processes(self, name: str) -> list[int]:
        """Pids of every live process of builder `name` (empty when it is stopped)."""
        state = self._load()
        return self._builders.pids(state.record(name))

    def builder_store_paths(self, name: str) -> tuple[str, ...]:
        """The valid paths in builder `name`'s store (read from its database), sorted."""
        self._load().index(name)
        return valid_paths(self._builders.db_path(name))

    def built_paths(self, name: str) -> tuple[str, ...]:
        """The paths builder `name` built itself, sorted.

        Nix marks a path "ultimate" in the store that built it; a path received from another
        store (an input copied in, an output copied out) is not. This is how tests and the
        demo tell where a derivation was built, from the builders' own stores.
        """
        self._load().index(name)
        return valid_paths(self._builders.db_path(name), only_built=True)

    def where_built(self, paths: Iterable[str]) -> dict[str, list[str]]:
        """For each of `paths`, the builders that built it (usually one, or none)."""
        built = {name: set(self.built_paths(name)) for name in self.names()}
        return {p: sorted(n for n, theirs in built.items() if p in theirs) for p in paths}

    def run_in(
        self,
        name: str,
        argv: Sequence[str],
        *,
        input: bytes | None = None,  # noqa: A002 - the subprocess name for it
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` as root inside builder `name`'s mount namespace; capture its output.

        A running (or frozen) builder is entered with ``nsenter``; for a stopped one the
        command gets a namespace of its own with the same mounts. `check` raises `FarmError`
        on a non-zero exit, with the command's stderr.
        """
        result = self._builders.run(self._load().record(name), argv, input=input, env=env)
        if check and result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise FarmError(
                f"builder {name}: {' '.join(argv)} exited with {result.returncode}: {stderr}"
            )
        return result

    def client_argv(
        self,
        version: str,
        command: Sequence[str],
        *,
        daemon: bool = False,
        cwd: Path | None = None,
        sandbox: bool = False,
        conf: Sequence[str] = (),
    ) -> list[str]:
        """Run `command` as a Nix `version` client against this farm (`nixdist.farm.client`).

        The command runs in `cwd` (default: the current directory now). The client keeps its
        own store (`client_store_dir`) between calls; `reset_client` empties it. Run the
        result with the environment the command should see. `sandbox`: the client may use
        Nix's build sandbox (pivot_root, not chroot); `conf`: more ``nix.conf`` lines.
        """
        return client.client_argv(
            self.directory, version, command, daemon=daemon, cwd=cwd, sandbox=sandbox, conf=conf
        )

    def client_store_dir(self, version: str) -> Path:
        """The host directory a Nix `version` client sees as ``/nix/store``."""
        return client.client_store_dir(self.directory, version)

    def reset_client(self, version: str) -> None:
        client.reset_client(self.directory, version)

    def install_ssh_include(self, ssh_config: Path | None = None) -> bool:
        """Add ``Include <farm>/ssh_config`` at the top of ``~/.ssh/config`` (idempotent)."""
        return add_ssh_include(self.ssh_config, ssh_config)

    def remove_ssh_include(self, ssh_config: Path | None = None) -> bool:
        return remove_ssh_include(self.ssh_config, ssh_config)

    # ---------------------------------------------------------------- internals: state

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the farm's lock; without `create`, the farm must exist already."""
        if not create and not self.state_file.exists():
            raise FarmError(f"no farm in {self.directory} (run: nixdist farm up)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock_file.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> FarmState:
        default_prefix = self._alias_prefix_arg or DEFAULT_ALIAS_PREFIX
        return load_state(self.state_file, default_prefix=default_prefix)

    def _save(self, state: FarmState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, encode_state(state))
        self._write_client_files(state)

    def _save_if_exists(self, state: FarmState) -> None:
        if self.state_file.exists():
            self._save(state)

    def _write_client_files(self, state: FarmState) -> None:
        key = str(self.client_key)
        machines: list[str] = []
        blocks: list[str] = []
        known: list[tuple[str, str]] = []
        for record in state.records:
            spec = record.spec
            alias = state.alias_prefix + spec.name
            host_key = self._host_key_line(spec.name)
            machines.append(
                render.render_machine_line(spec, alias=alias, client_key=key, host_key=host_key)
            )
            blocks.append(
                render.render_ssh_config_block(
                    alias=alias, port=record.port, client_key=key, known_hosts=str(self.known_hosts)
                )
            )
            known.append((alias, host_key))
        atomic_write(self.known_hosts, render.render_known_hosts(known))
        atomic_write(self.ssh_config, render.render_ssh_config(blocks))
        atomic_write(self.machines_file, render.render_machines(machines))

    def _host_key_line(self, name: str) -> str:
        pub = self.builder_dir(name) / "etc-ssh" / f"{Path(render.INNER_HOST_KEY).name}.pub"
        try:
            return render.host_key_line(pub.read_text())
        except (OSError, ValueError) as err:
            raise FarmError(f"builder {name}: cannot read its host key: {err}") from None

    # ---------------------------------------------------------------- internals: builders

    def _ensure_client_key(self) -> None:
        if not self.client_key.exists():
            launch.keygen(self.client_key, comment="nixdist-farm-client")

    def _ensure_rootfs(self, specs: Iterable[BuilderSpec] | None) -> None:
        """Build the root filesystems `specs` need (minutes, once), before the farm's lock."""
        versions = sorted({s.nix for s in specs or () if s.nix is not None})
        if versions:
            ensure_rootfs_many(versions)

    def _running_record(self, name: str) -> BuilderRecord:
        state = self._load()
        record = state.record(name)
        if self._builders.live_pid(record) is None:
            raise FarmError(f"builder {name} is not running")
        return record

    def _start(self, state: FarmState, record: BuilderRecord) -> BuilderRecord:
        name = record.spec.name
        self._builders.kill(record)  # leftovers of a builder whose sshd died
        if not launch.port_bindable(record.port):
            record = replace(record, port=launch.free_port({r.port for r in state.records}))
            state.records[state.index(name)] = record
            prepare_builder(self.builder_dir(record.spec.name), record, self.client_key)
            self._save(state)
        return self._builders.launch(record)

    def _status(self, state: FarmState, record: BuilderRecord) -> BuilderStatus:
        return self._builders.status(record, alias=state.alias_prefix + record.spec.name)

    def _statuses(self, state: FarmState) -> tuple[BuilderStatus, ...]:
        return tuple(self._status(state, record) for record in state.records)
