"""Starting processes inside a builder's mount namespace, and the files that go with it.

A builder's namespace is made by::

    unshare --mount --propagation private -- /bin/sh -c <LAUNCH_SCRIPT> nixdist-farm-launch \\
        <pidfile or -> <source> <target> [<source> <target> ...] -- <command...>

The script writes its own pid (which the command keeps, through ``exec``) unless the pidfile
is ``-``, bind-mounts each source over its target in order and execs the command. sshd is
started detached (``setsid --fork`` in front, stdio on a log file), so it never holds the
caller's pipes nor stays the caller's child; the farm learns its pid from the pidfile and that
it is ready from its log line ``Server listening on 127.0.0.1 port <port>.``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
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
_POLL_SECONDS: Final = 0.02


def namespace_argv(
    mounts: Sequence[str], command: Sequence[str], *, pidfile: Path | None = None
) -> list[str]:
    """The command line that runs `command` in a new mount namespace with `mounts` bound."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        LAUNCH_SCRIPT,
        _LAUNCH_ARGV0,
        str(pidfile) if pidfile is not None else "-",
        *mounts,
        "--",
        *command,
    ]


def start_sshd(
    *,
    name: str,
    mounts: Sequence[str],
    sshd_command: Sequence[str],
    pidfile: Path,
    launch_log: Path,
    sshd_log: Path,
    port: int,
    timeout: float,
) -> tuple[int, int]:
    """Start sshd detached in a new namespace; wait until it listens. Returns (pid, mount ns)."""
    pidfile.unlink(missing_ok=True)
    offset = sshd_log.stat().st_size if sshd_log.exists() else 0
    argv = ["setsid", "--fork", *namespace_argv(mounts, sshd_command, pidfile=pidfile)]
    with launch_log.open("ab") as out:
        launched = subprocess.run(
            argv,
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
