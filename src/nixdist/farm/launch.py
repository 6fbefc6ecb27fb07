"""Starting processes inside a builder's mount namespace, and the files that go with it.

A builder's namespace is made by::

    unshare --mount --propagation private -- /bin/sh -c <LAUNCH_SCRIPT> nixdist-farm-launch \\
        <pidfile or -> <source> <target> [<source> <target> ...] -- <command...>

The script writes its own pid (which the command keeps, through ``exec``) unless the pidfile
is ``-``, bind-mounts each source over its target in order and execs the command. sshd is
started detached (``setsid --fork`` in front, stdio on a log file), so it never holds the
caller's pipes nor stays the caller's child; the farm learns its pid from the pidfile and that
it is ready from its log line ``Server listening on 127.0.0.1 port <port>.``.

A builder or client that runs a Nix version of its own (`nixdist.farm.rootfs`) is chrooted
into that version's root filesystem instead::

    unshare --mount --propagation private -- /bin/sh -c <CHROOT_SCRIPT> nixdist-farm-chroot \
        <pidfile or -> <stage> <rootfs> <source> <target> [...] -- <command...>

In the new namespace the script mounts a tmpfs on `stage` (an empty directory; the tmpfs is
seen only in this namespace, so any number of namespaces can use the same stage), an overlay
on ``<stage>/root`` with the root filesystem as its read-only lower layer and the tmpfs as the
upper one (so nothing ever writes into the shared root filesystem, and mount points for any
path can be made), then bind-mounts each source on ``<stage>/root/<target>`` (a source
``rbind:PATH`` recursively, for /dev and /sys; a file on a file, such as /etc/passwd) and
execs ``chroot <stage>/root <command>``. Targets are mounted parents first (see `order_mounts`).

A chrooted process may not create user namespaces (the kernel refuses ``unshare(CLONE_NEWUSER)``
to a process whose root is not its mount namespace's root), and Nix's build sandbox needs them
where it has no build users (root without ``build-users-group``, and always for a chroot store
such as ``--store /tmp/x``, which Nix builds in only sandboxed). ``chroot_argv(pivot=True)``
therefore runs `PIVOT_SCRIPT` instead: the same mounts, then ``pivot_root`` makes
``<stage>/root`` the namespace's root, the old root is unmounted (lazily) and its mount point
removed, and the command is exec'ed from the new root. Its processes see nothing of the host
but what `mounts` binds, and may build in Nix's sandbox.

A builder with a user of its own has a ``nix-daemon`` for its store: the command is wrapped
in `with_daemon`, a shell that starts the daemon in the background (``setpriv --pdeathsig
KILL``, so it dies with the shell's process) and execs the command in its place. The daemon
thus never outlives sshd, and like every process of the builder it is in its namespace, so
stopping the builder kills it too.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import subprocess
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

from nixdist.farm import procs
from nixdist.farm.errors import FarmError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

# Environment for everything the farm starts: nothing of the caller's (NIX_REMOTE, TMPDIR,
# NIX_CONF_DIR, ...) may leak into a builder.
CLEAN_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
}

LAUNCH_SCRIPT: Final = """\
set -e
if [ "$1" != - ]; then echo "$$" > "$1.tmp"; mv "$1.tmp" "$1"; fi
shift
while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""
_LAUNCH_ARGV0: Final = "nixdist-farm-launch"
#: A shell script (the next argument) run in a mount namespace of its own, mounts private.
IN_NEW_NAMESPACE: Final = ("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c")

#: What CHROOT_SCRIPT and PIVOT_SCRIPT share: the pidfile, the overlay and the binds.
_MOUNTS_SCRIPT: Final = """\
set -e
if [ "$1" != - ]; then echo "$$" > "$1.tmp"; mv "$1.tmp" "$1"; fi
stage=$2
mount -t tmpfs -o mode=0755 nixdist-stage "$stage"
mkdir "$stage/upper" "$stage/work" "$stage/root"
mount -t overlay nixdist-root \
    -o "lowerdir=$3,upperdir=$stage/upper,workdir=$stage/work" "$stage/root"
shift 3
while [ "$1" != -- ]; do
  [ -e "$stage/root$2" ] || mkdir -p "$stage/root$2"
  case $1 in
    rbind:*) mount --rbind "${1#rbind:}" "$stage/root$2" ;;
    *) mount --bind "$1" "$stage/root$2" ;;
  esac
  shift 2
done
shift
"""
CHROOT_SCRIPT: Final = _MOUNTS_SCRIPT + 'exec chroot "$stage/root" "$@"\n'
_CHROOT_ARGV0: Final = "nixdist-farm-chroot"
#: CHROOT_SCRIPT with pivot_root in place of chroot (module docstring); the same arguments.
PIVOT_SCRIPT: Final = (
    _MOUNTS_SCRIPT
    + """\
cd "$stage/root"
mkdir .nixdist-old-root
pivot_root . .nixdist-old-root
exec chroot . /bin/sh -c \\
  'umount -l /.nixdist-old-root && rmdir /.nixdist-old-root && exec "$@"' nixdist-farm-pivot "$@"
"""
)
_PIVOT_ARGV0: Final = "nixdist-farm-pivot"

DAEMON_SCRIPT: Final = """\
log=$1
shift
rm -f /nix/var/nix/daemon-socket/socket
setpriv --pdeathsig KILL -- nix-daemon >>"$log" 2>&1 </dev/null &
exec "$@"
"""
_DAEMON_ARGV0: Final = "nixdist-farm-daemon"
#: Where a builder's nix-daemon listens, inside the builder.
DAEMON_SOCKET: Final = "/nix/var/nix/daemon-socket/socket"
#: Characters overlayfs's mount options cannot carry in a lowerdir path.
_OVERLAY_UNSAFE: Final = frozenset(",:\\")
_POLL_SECONDS: Final = 0.02


def namespace_argv(
    mounts: Sequence[str], command: Sequence[str], *, pidfile: Path | None = None
) -> list[str]:
    """The command line that runs `command` in a new mount namespace with `mounts` bound."""
    return [
        *IN_NEW_NAMESPACE,
        LAUNCH_SCRIPT,
        _LAUNCH_ARGV0,
        str(pidfile) if pidfile is not None else "-",
        *mounts,
        "--",
        *command,
    ]


def with_daemon(command: Sequence[str], *, log: str) -> list[str]:
    """`command` run after a ``nix-daemon`` is started beside it (module docstring); `log`
    is the daemon's output file, as the builder sees it."""
    return ["/bin/sh", "-c", DAEMON_SCRIPT, _DAEMON_ARGV0, log, *command]


def wait_for_socket(name: str, socket_path: Path, log: Path, *, timeout: float) -> None:
    """Wait until the builder's nix-daemon made its socket (`socket_path`, as the host sees
    it); `timeout` bounds a daemon that never starts."""
    deadline = time.monotonic() + timeout
    while not socket_path.is_socket():
        if time.monotonic() > deadline:
            raise FarmError(f"builder {name}: nix-daemon made no socket: {tail(log)}")
        time.sleep(_POLL_SECONDS)


def chroot_argv(
    *,
    stage: Path,
    rootfs: Path,
    mounts: Sequence[tuple[str, str]],
    command: Sequence[str],
    pidfile: Path | None = None,
    pivot: bool = False,
) -> list[str]:
    """The command line that runs `command` chrooted in `rootfs` (see the module docstring).

    `mounts` are (source, target) pairs; a source ``rbind:PATH`` is bound recursively. With
    `pivot`, the namespace's root is changed with ``pivot_root`` instead, so that the command
    may create user namespaces (Nix's build sandbox).
    """
    if _OVERLAY_UNSAFE & set(str(rootfs)):
        raise FarmError(f"the root filesystem path {rootfs} cannot contain ',', ':' or '\\'")
    return [
        *IN_NEW_NAMESPACE,
        PIVOT_SCRIPT if pivot else CHROOT_SCRIPT,
        _PIVOT_ARGV0 if pivot else _CHROOT_ARGV0,
        str(pidfile) if pidfile is not None else "-",
        str(stage),
        str(rootfs),
        *(item for pair in order_mounts(mounts) for item in pair),
        "--",
        *command,
    ]


def order_mounts(mounts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """`mounts` with parents before children (by target depth; stable otherwise).

    A same-path bind (source == target) inside another same-path bind is dropped: the
    outer one shows it already.
    """
    ordered = sorted(mounts, key=lambda pair: len(PurePosixPath(pair[1]).parts))
    kept: list[tuple[str, str]] = []
    for source, target in ordered:
        covered = source == target and any(
            s == t and PurePosixPath(target).is_relative_to(t) for s, t in kept
        )
        if not covered:
            kept.append((source, target))
    return kept


def start_sshd(
    *,
    name: str,
    argv: Sequence[str],
    pidfile: Path,
    launch_log: Path,
    sshd_log: Path,
    port: int,
    timeout: float,
) -> tuple[int, int]:
    """Start sshd detached in a new namespace; wait until it listens. Returns (pid, mount ns).

    `argv` runs sshd in the namespace and writes `pidfile` (`namespace_argv`, `chroot_argv`).
    """
    pidfile.unlink(missing_ok=True)
    offset = sshd_log.stat().st_size if sshd_log.exists() else 0
    with launch_log.open("ab") as out:
        launched = subprocess.run(
            ["setsid", "--fork", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(CLEAN_ENV),
            cwd="/",
            check=False,
        )
    if launched.returncode != 0:
        raise FarmError(f"builder {name}: setsid failed: {tail(launch_log)}")
    deadline = time.monotonic() + timeout
    pid = _wait_for_pid(name, pidfile, launch_log, deadline)
    listening = f"Server listening on 127.0.0.1 port {port}."
    while True:
        if not procs.is_alive(pid):
            logs = f"{tail(launch_log)} {tail(sshd_log, offset)}"
            raise FarmError(f"builder {name}: sshd exited at start: {logs}")
        if listening in read_from(sshd_log, offset):
            break
        if time.monotonic() > deadline:
            raise FarmError(f"builder {name}: sshd is not listening: {tail(sshd_log, offset)}")
        time.sleep(_POLL_SECONDS)
    ns = procs.mount_ns(pid)
    if ns is None or ns == procs.own_mount_ns():
        raise FarmError(f"builder {name}: sshd (pid {pid}) has no mount namespace of its own")
    return pid, ns


def _wait_for_pid(name: str, pidfile: Path, launch_log: Path, deadline: float) -> int:
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pidfile.read_text())
        if time.monotonic() > deadline:
            raise FarmError(f"builder {name}: the launcher did not start: {tail(launch_log)}")
        time.sleep(_POLL_SECONDS)


_SSHD_VERSION: Final = re.compile(r"OpenSSH_(\d+)\.(\d+)")


@functools.cache
def sshd_version(root: str) -> tuple[int, int] | None:
    """The OpenSSH version of ``/usr/sbin/sshd`` in the root filesystem `root` ("/": this
    host's), from ``sshd -V``; None when it cannot be told."""
    argv = ["/usr/sbin/sshd", "-V"] if root == "/" else ["chroot", root, "/usr/sbin/sshd", "-V"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _SSHD_VERSION.search(done.stdout + done.stderr)
    return None if match is None else (int(match[1]), int(match[2]))


def keygen(path: Path, *, comment: str) -> None:
    """A new ed25519 key pair at `path` and `path`.pub, without a passphrase."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dict(CLEAN_ENV),
        check=False,
    )
    if result.returncode != 0:
        raise FarmError(f"ssh-keygen for {path} failed: {result.stderr.decode(errors='replace')}")


def port_bindable(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:`port` now (as sshd does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(avoid: set[int]) -> int:
    """A loopback port free right now and not in `avoid`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise FarmError("no free loopback port found")


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: Path, offset: int = 0, lines: int = 10) -> str:
    """The last `lines` lines of `path` after `offset`, on one line, for error messages."""
    text = read_from(path, offset).strip()
    return " | ".join(text.splitlines()[-lines:]) or f"(nothing in {path})"
