"""A farm's builders as processes on this machine: started, found, entered, killed, and seen.

`nixdist.farm.farm.Farm` keeps the farm's state (which builders, their ports, the lock) and
decides when a builder starts or stops; `Builders` does it, for one builder record at a time.

Starting a builder runs, detached (``setsid --fork``, stdio on files; `nixdist.farm.launch`)::

    unshare --mount --propagation private -- /bin/sh -c <launch script> \\
        <pidfile> <src> <target> … -- /usr/sbin/sshd -D -f /etc/ssh/sshd_config -E …

The script writes its pid, bind-mounts the builder's directories over ``/nix``, ``/etc/nix``,
``/etc/ssh``, ``/root`` and ``/tmp`` (a target that contains the farm directory itself goes
last, so every source is still reachable when it is mounted) and execs sshd, which keeps the
pid. The builder is up when its sshd logs ``Server listening on 127.0.0.1 port <port>``.
Every session and build the builder runs inherits the namespace (or a copy of it: Nix run as
root unshares one for itself); stopping a builder SIGKILLs every process in it. A process
counts as the builder's if it is in a mount namespace other than the farm's own and its
``/proc/PID/root/nix`` is the builder's ``nix/`` directory (`nixdist.farm.procs`), so a
recycled pid or namespace inode is never mistaken for it.

A builder with a Nix version of its own (``nix=2.34``) runs the same sshd command chrooted in
that version's root filesystem (`nixdist.farm.rootfs`; `nixdist.farm.layout.chroot_argv`): the
same directories are bound on the same targets under the chroot, with /proc, /dev, /sys and the
farm directory at its own path. Its processes' ``/proc/PID/root/nix`` is still its ``nix/``.

A builder with a ``user`` (an ordinary user clients log in as, see `nixdist.farm.spec`) also
gets ``/home``, ``/etc/passwd`` and ``/etc/group`` of its own (`render.render_passwd`), and
its sshd command is wrapped so that a ``nix-daemon`` runs beside it
(`nixdist.farm.launch.with_daemon`): the user's ``nix-store --serve`` reaches the store (owned
by root) through it, as on a real multi-user machine. The builder is up once the daemon's
socket exists too.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.farm import launch, procs, render
from nixdist.farm.layout import chroot_argv, mount_args, valid_paths

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.farm.spec import BuilderSpec
    from nixdist.farm.statefile import BuilderRecord

#: The first line of root's ``.bashrc`` on a builder made noisy (`nixdist.farm.Farm.set_noisy`).
NOISE_MARKER: Final = "# nixdist farm: noisy shell"
_CHROOT_SSHD: Final = "/usr/sbin/sshd"  # in every root filesystem (openssh-server)


class BuilderState(StrEnum):
    RUNNING = "running"
    FROZEN = "frozen"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderStatus:
    """A builder as it is now."""

    spec: BuilderSpec
    alias: str
    port: int
    state: BuilderState
    pid: int | None
    mount_ns: int | None
    store_paths: int
    noisy: bool

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Builders:
    """The builders of the farm in `directory`: where each one lives, and its processes."""

    directory: Path
    sshd: str | None  # the host's sshd (a builder with a Nix version runs its root fs's)
    start_timeout: float

    def builder_dir(self, name: str) -> Path:
        return self.directory / "builders" / name

    def db_path(self, name: str) -> Path:
        """Builder `name`'s Nix database (its store's valid paths)."""
        return self.builder_dir(name) / "nix" / "var" / "nix" / "db" / "db.sqlite"

    def sshd_log(self, name: str) -> Path:
        return self.builder_dir(name) / "etc-ssh" / "sshd.log"

    def pids(self, record: BuilderRecord) -> list[int]:
        """Live processes in the builder's namespace (or a copy Nix made of it) whose /nix is
        the builder's own."""
        if record.mount_ns is None or record.mount_ns == procs.own_mount_ns():
            return []
        try:
            mine = (self.builder_dir(record.spec.name) / "nix").stat()
        except FileNotFoundError:
            return []
        found: list[int] = []
        # Not only its namespace: Nix as root (its nix-daemon, a root login's nix-store)
        # unshares a copy of it, so any process outside this one's namespace may be its.
        for pid in procs.pids_outside_own_ns():
            try:
                theirs = Path(f"/proc/{pid}/root/nix").stat()
            except OSError:
                continue
            if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
                found.append(pid)
        return found

    def live_pid(self, record: BuilderRecord) -> int | None:
        """The builder's sshd pid if that process is alive and really the builder's."""
        if record.pid is None:
            return None
        return record.pid if record.pid in self.pids(record) else None

    def kill(self, record: BuilderRecord) -> BuilderRecord:
        """SIGKILL every process of the builder; the record without its pid and namespace."""
        procs.kill_all(lambda: self.pids(record))
        return replace(record, pid=None, mount_ns=None)

    def launch(self, record: BuilderRecord) -> BuilderRecord:
        """Start the builder's sshd (and nix-daemon, with a user) in a namespace of its own, on
        the record's port, and wait until it listens; the record with its pid and namespace."""
        name = record.spec.name
        assert self.sshd is not None  # checked by check_host  # noqa: S101 - narrowing
        base = self.builder_dir(name)
        pidfile = base / "sshd.pid"
        sshd_args = ["-D", "-f", render.INNER_SSHD_CONFIG, "-E", render.INNER_SSHD_LOG]
        command = [self.sshd if record.spec.nix is None else _CHROOT_SSHD, *sshd_args]
        daemon_log = base / "etc-nix" / Path(render.INNER_DAEMON_LOG).name
        socket = base / launch.DAEMON_SOCKET.removeprefix("/")
        if record.spec.user is not None:
            command = launch.with_daemon(command, log=render.INNER_DAEMON_LOG)
            socket.unlink(missing_ok=True)
        pid, ns = launch.start_sshd(
            name=name,
            argv=self._new_namespace_argv(record.spec, command, pidfile=pidfile),
            pidfile=pidfile,
            launch_log=base / "launch.log",
            sshd_log=self.sshd_log(name),
            port=record.port,
            timeout=self.start_timeout,
        )
        if record.spec.user is not None:
            launch.wait_for_socket(name, socket, daemon_log, timeout=self.start_timeout)
        return replace(record, pid=pid, mount_ns=ns)

    def run(
        self,
        record: BuilderRecord,
        argv: Sequence[str],
        *,
        input: bytes | None = None,  # noqa: A002 - the subprocess name for it
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` as root inside the builder's mount namespace; capture its output.

        A running (or frozen) builder is entered with ``nsenter``; for a stopped one the
        command gets a namespace of its own with the same mounts.
        """
        pid = self.live_pid(record)
        if pid is not None:
            # --root without a path: sshd's, i.e. the builder's chroot for a versioned builder
            # (and the host's root otherwise, even when this runs in a chroot of its own).
            full = ["nsenter", f"--target={pid}", "--mount", "--root", "--wd=/", "--", *argv]
        else:
            full = self._new_namespace_argv(record.spec, argv)
        return subprocess.run(
            full,
            input=input,
            capture_output=True,
            env={**launch.CLEAN_ENV, **(env or {})},
            cwd="/",
            check=False,
        )

    def status(self, record: BuilderRecord, *, alias: str) -> BuilderStatus:
        name = record.spec.name
        pid = self.live_pid(record)
        if pid is None:
            run_state = BuilderState.STOPPED
        elif procs.is_stopped(pid):
            run_state = BuilderState.FROZEN
        else:
            run_state = BuilderState.RUNNING
        bashrc = self.builder_dir(name) / "home" / ".bashrc"
        try:
            noisy = bashrc.read_text().startswith(NOISE_MARKER)
        except OSError:
            noisy = False
        return BuilderStatus(
            spec=record.spec,
            alias=alias,
            port=record.port,
            state=run_state,
            pid=pid,
            mount_ns=record.mount_ns if pid is not None else None,
            store_paths=len(valid_paths(self.db_path(name))),
            noisy=noisy,
        )

    def _new_namespace_argv(
        self, spec: BuilderSpec, command: Sequence[str], *, pidfile: Path | None = None
    ) -> list[str]:
        """`command` in a new namespace of builder `spec`: chrooted in its root filesystem (a
        builder with a Nix version), or with its directories over the host's
        (`nixdist.farm.layout`)."""
        base = self.builder_dir(spec.name)
        if spec.nix is not None:
            return chroot_argv(base, spec, command, farm_dir=self.directory, pidfile=pidfile)
        mounts = mount_args(base, spec, farm_dir=self.directory)
        return launch.namespace_argv(mounts, command, pidfile=pidfile)
