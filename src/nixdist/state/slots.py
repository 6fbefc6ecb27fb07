"""Build slots as lock files in Nix's ``current-load`` directory, shared with ``build-remote``.

Nix's ``build-remote`` counts how busy a builder is by lock files (nix-protocols.md §2.5 to §2.7).
nixdist uses the same directory, the same file names and the same kind of lock, so a stock
``build-remote`` and nixdist running on one host never oversubscribe a builder together:

    <current-load>/main-lock                 held (blocking) while one hook picks a machine
    <current-load>/<escape(uri)>-<slot>      slot 0 .. max-jobs-1; locked = in use

``build-remote`` also serialises the uploads to each builder with an
``<escape(uri)>.upload-lock`` file (NixOS/nix#11083); nixdist does not take it: concurrent
uploads to one builder share the link better than one at a time (``make bench``, W2).

``escape(uri)`` replaces every ``/`` by ``_`` (``ssh://b1`` → ``ssh:__b1``). Files are created
empty with mode 0600 and never deleted; a lock is held exactly as long as its file descriptor
(or a duplicate of it) is open, so a process that dies releases its slots.

Locks are BSD ``flock(2)`` locks (`fcntl.flock`, exclusive). POSIX record locks
(`fcntl.lockf`) do not interact with them on Linux and must not be used here. flock locks
belong to the open file description, so two separate opens in *one* process also exclude each
other: a slot this process already leases counts as load when it probes again. Every file is
opened with ``O_CLOEXEC`` so an SSH control master started by the hook never inherits a slot.
Do not nest `SlotDirectory.main_lock` in one process: the inner one would wait forever.

Directory: ``$NIX_CURRENT_LOAD`` when set (the old Perl hook's variable), else
``<state dir>/current-load``, where the state dir is the local store's state directory
(``$NIX_STATE_DIR`` or ``/nix/var/nix`` by default). It is created with mode 0777 (less the
umask) when missing, ignoring errors, as Nix does.

One ``try``, the way the hook uses this module (Nix does the same, §2.5)::

    slots = SlotDirectory.default()
    with slots.main_lock():
        tries = [slots.try_slot(m) for m in machines]
        decision = choose(request, local, [machine_state(t.machine, …) for t in tries])
        keep = tries[decision.index].lease if isinstance(decision, Accept) else None
        for t in tries:
            if t.lease is not keep and t.lease is not None:
                t.lease.release()
        if keep is not None:
            keep.touch()
    # `keep` stays held until the build ends (or the process exits);
    # machine_state: `nixdist.state.view`, with the probe's load and free slot
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

    from nixdist.model.machines import Machine

DEFAULT_NIX_STATE_DIR = Path("/nix/var/nix")
CURRENT_LOAD = "current-load"
MAIN_LOCK = "main-lock"
#: The longest a hook waits for ``main-lock``.
MAIN_LOCK_TIMEOUT_S = 60.0


def escape_uri(uri: str) -> str:
    """Nix's lock-file name for a store URI: every ``/`` becomes ``_``, nothing else changes."""
    return uri.replace("/", "_")


def default_current_load_dir(
    *, state_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Where the slot locks live: ``$NIX_CURRENT_LOAD``, else ``<state dir>/current-load``.

    `state_dir` is the local store's state directory when the caller knows it (a store such as
    ``local?root=/x`` has its own); otherwise ``$NIX_STATE_DIR`` or ``/nix/var/nix``.
    """
    env = os.environ if environ is None else environ
    if override := env.get("NIX_CURRENT_LOAD"):
        return Path(override)
    if state_dir is None:
        state_dir = Path(env.get("NIX_STATE_DIR") or DEFAULT_NIX_STATE_DIR)
    return state_dir / CURRENT_LOAD


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SlotLease:
    """A held slot lock: the slot is ours until `release()`, the end of a ``with``, or exit."""

    __slots__ = ("_fd", "path", "slot")

    def __init__(self, *, fd: int, path: Path, slot: int) -> None:
        self._fd: int | None = fd
        self.path = path
        self.slot = slot

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"slot lease {self.path} was released")
        return self._fd

    def touch(self) -> None:
        """Set the lock file's mtime to now (``futimens``), as Nix does to show the last use."""
        os.utime(self.fileno())

    def release(self) -> None:
        """Give the slot back. Releasing twice does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<SlotLease {self.path.name} {state}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotTry:
    """One try at a machine's slots: how many are in use, and a free one if any (held).

    When `lease` is not None the caller owns it and must release it unless it keeps the slot.
    """

    machine: Machine
    load: int
    lease: SlotLease | None

    @property
    def free_slot(self) -> bool:
        return self.lease is not None


class SlotDirectory:
    """The ``current-load`` directory: the main lock and the slot locks."""

    __slots__ = ("path",)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def default(
        cls, *, state_dir: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> Self:
        return cls(default_current_load_dir(state_dir=state_dir, environ=environ))

    def __repr__(self) -> str:
        return f"SlotDirectory({str(self.path)!r})"

    def ensure(self) -> None:
        """Create the directory (mode 0777 less the umask) and its parents if missing, as
        build-remote does (a store that has never been written has no /nix/var/nix yet);
        errors are ignored."""
        with contextlib.suppress(OSError):
            self.path.mkdir(mode=0o777, parents=True)

    def slot_path(self, uri: str, slot: int) -> Path:
        return self.path / f"{escape_uri(uri)}-{slot}"

    def _open(self, path: Path) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self.ensure()
            return os.open(path, flags, 0o600)

    @contextlib.contextmanager
    def main_lock(self) -> Iterator[None]:
        """Hold ``main-lock`` while probing slots and choosing a machine (each hook holds it
        for milliseconds; one that holds it for `MAIN_LOCK_TIMEOUT_S` is stuck)."""
        self.ensure()
        path = self.path / MAIN_LOCK
        fd = self._open(path)
        try:
            if not _try_flock(fd):
                # Another hook is choosing: wait for it, within a bound (imported only now, the
                # decline path stays light).
                from nixdist.transport.locks import flock_within  # noqa: PLC0415

                flock_within(fd, timeout_s=MAIN_LOCK_TIMEOUT_S, what=f"{path} (Nix's slot lock)")
            yield
        finally:
            os.close(fd)

    def try_slot(self, machine: Machine) -> SlotTry:
        """Try every slot of `machine` without waiting: locked ones are its load.

        The first free slot stays locked and is returned as the lease; the other free slots are
        unlocked again at once. Call this under `main_lock`, as Nix does, so that two hooks
        choosing at the same time see each other's choices.
        """
        load = 0
        lease: SlotLease | None = None
        try:
            for slot in range(machine.max_jobs):
                path = self.slot_path(machine.uri, slot)
                fd = self._open(path)
                try:
                    free = _try_flock(fd)
                except BaseException:
                    os.close(fd)
                    raise
                if free and lease is None:
                    lease = SlotLease(fd=fd, path=path, slot=slot)
                    continue
                os.close(fd)  # in use, or free but we keep only the first free one
                if not free:
                    load += 1
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return SlotTry(machine=machine, load=load, lease=lease)

    def count_loads(self, machines: Sequence[Machine]) -> list[int]:
        """The load of each machine, holding nothing afterwards (for ``nixdist status``)."""
        loads: list[int] = []
        with self.main_lock():
            for machine in machines:
                probe = self.try_slot(machine)
                if probe.lease is not None:
                    probe.lease.release()
                loads.append(probe.load)
        return loads
