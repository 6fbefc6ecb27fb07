"""Processes of a builder, found by their mount namespace, and signals to all of them.

Every process of a builder — its ``sshd`` listener, the per-connection ``sshd`` children,
the ``nix-store --serve`` sessions, the builds they start, anything `Farm.run_in` entered —
lives in the builder's mount namespace, so ``/proc/PID/ns/mnt`` names them all; except that
Nix run as root unshares a copy of that namespace for itself (`pids_outside_own_ns`), so the
farm finds a builder's processes by their ``/nix`` (see `nixdist.farm.builders`). A namespace
is identified by the inode number of that link (``mnt:[4026532177]``). Zombies have no
namespace link any more and count as gone.

The host's own namespace is never a target: the functions refuse it, so a corrupt state file
cannot make `kill_all` signal the whole machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.farm.errors import FarmError

if TYPE_CHECKING:
    from collections.abc import Callable

_PROC: Final = Path("/proc")
_POLL_SECONDS: Final = 0.01
_POLL_ROUNDS: Final = 1000  # 10 s at most for the kernel to deliver signals


def mount_ns(pid: int | str) -> int | None:
    """The mount namespace inode of process `pid`, or None when it is gone (or a zombie)."""
    try:
        link = Path(f"/proc/{pid}/ns/mnt").readlink()
    except OSError:
        return None
    inner = str(link).partition("[")[2].rstrip("]")  # the link reads mnt:[4026532177]
    return int(inner) if inner.isdigit() else None


def own_mount_ns() -> int:
    ns = mount_ns("self")
    if ns is None:
        raise FarmError("cannot read /proc/self/ns/mnt")
    return ns


def process_state(pid: int) -> str | None:
    """The one-letter state from ``/proc/PID/stat`` (R, S, D, T, t, Z, …), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The line is: pid, then the command name in parentheses (it may contain both), state.
    after = stat.rpartition(")")[2].split()
    return after[0] if after else None


def is_alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state not in {"Z", "X"}


def is_stopped(pid: int) -> bool:
    return process_state(pid) in {"T", "t"}


def pids_outside_own_ns() -> list[int]:
    """Live processes in any mount namespace but this process's own, in pid order.

    A builder's processes are not all in its namespace: Nix run as root (``nix-daemon``,
    ``nix-store --serve`` of a root login) unshares a mount namespace of its own at start,
    a copy of the builder's, and its children stay in it.
    """
    own = own_mount_ns()
    found: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        ns = mount_ns(pid)
        if ns is not None and ns != own and is_alive(pid):
            found.append(pid)
    return sorted(found)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_all(find: Callable[[], list[int]]) -> None:
    """SIGKILL every process `find` returns, again until it returns none (late forks too)."""
    for _ in range(_POLL_ROUNDS):
        pids = find()
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(_POLL_SECONDS)
    raise FarmError(f"processes still alive after SIGKILL: {find()}")


def stop_all(find: Callable[[], list[int]]) -> list[int]:
    """SIGSTOP every process `find` returns until all are stopped; returns their pids."""
    for _ in range(_POLL_ROUNDS):
        running = [pid for pid in find() if not is_stopped(pid)]
        if not running:
            return find()
        for pid in running:
            _signal(pid, signal.SIGSTOP)
        time.sleep(_POLL_SECONDS)
    raise FarmError("processes did not stop after SIGSTOP")


def continue_all(find: Callable[[], list[int]]) -> None:
    """SIGCONT every stopped process `find` returns until none is stopped."""
    for _ in range(_POLL_ROUNDS):
        stopped = [pid for pid in find() if is_stopped(pid)]
        if not stopped:
            return
        for pid in stopped:
            _signal(pid, signal.SIGCONT)
        time.sleep(_POLL_SECONDS)
    raise FarmError("processes are still stopped after SIGCONT")
