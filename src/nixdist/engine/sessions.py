"""Open store sessions of one run, reused from build to build.

A session (``nix-store --serve`` or ``nix-daemon --stdio`` over the builder's control master,
or the local ``nix-store --serve``) serves one command at a time, so each thread takes one for
as long as it needs it and gives it back when the session is in a known state; a session that
failed is aborted, never given back. `abort_all` ends every session at once (Ctrl-C): the
builds they run on builders end with them.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final, Protocol

from nixdist.engine.places import HERE
from nixdist.protocol.serve import ServeGreetingError
from nixdist.store.remote import open_remote
from nixdist.store.serve import ServeStore
from nixdist.transport.openssh import target_for_machine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from nixdist.model.derivation import BasicDerivation
    from nixdist.model.local_store import LocalStore
    from nixdist.model.machines import Machine
    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath
    from nixdist.protocol.logjson import LogMessage
    from nixdist.protocol.serve import BuildOptions, BuildResult
    from nixdist.store.remote import RemoteStore
    from nixdist.transport.openssh import ControlMasters


#: How long to wait before opening a session that closed before its greeting once more.
REOPEN_DELAY_S: Final = 0.2


class StoreSession(Protocol):
    """What a run does with one session: a copy's source or destination, a build, the end of
    it (`ServeStore` and `DaemonStore` are two; the unit tests script others)."""

    name: str

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]: ...

    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]: ...

    def query_closure(self, paths: Iterable[StorePath]) -> frozenset[StorePath]: ...

    def dump(self, path: StorePath) -> Iterator[bytes]: ...

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None: ...

    def build_derivation(
        self, drv_path: StorePath, drv: BasicDerivation, options: BuildOptions
    ) -> BuildResult: ...

    def forward_log(
        self, fd: int, on_message: Callable[[LogMessage], None] | None = None
    ) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class SessionPool(Protocol):
    """What a run and its copies need of `Sessions`."""

    def take(self, place: str) -> StoreSession: ...

    def give_back(self, place: str, session: StoreSession) -> None: ...

    def discard(self, session: StoreSession) -> None: ...

    def forget(self, place: str) -> None: ...

    def abort_all(self) -> None: ...


class Sessions:
    """Idle sessions per store (`HERE` or a builder's URI), and the ones in use."""

    def __init__(self, open_session: Callable[[str], StoreSession]) -> None:
        """`open_session` opens a new session with a place (`store_opener`'s, in a run)."""
        self._open = open_session
        self._lock = threading.Lock()
        self._idle: dict[str, list[StoreSession]] = {}
        self._busy: set[StoreSession] = set()
        self._closed = False

    @property
    def in_use(self) -> int:
        """How many sessions are taken and not given back or discarded."""
        with self._lock:
            return len(self._busy)

    def take(self, place: str) -> StoreSession:
        """A session with `place`: an idle one, else a new one (`TransportError` or
        `ProtocolError` when it cannot be opened)."""
        with self._lock:
            self._check_open()
            idle = self._idle.get(place)
            if idle:
                session = idle.pop()
                self._busy.add(session)
                return session
        session = self._open(place)
        with self._lock:
            try:
                self._check_open()
            except InterruptedError:
                session.abort()
                raise
            self._busy.add(session)
        return session

    def _check_open(self) -> None:
        if self._closed:
            raise InterruptedError("the run is over: no session may be opened")

    def give_back(self, place: str, session: StoreSession) -> None:
        """`session` is done with and in a known state: keep it for the next user."""
        with self._lock:
            self._busy.discard(session)
            if not self._closed:
                self._idle.setdefault(place, []).append(session)
                return
        session.close()

    def discard(self, session: StoreSession) -> None:
        """`session` failed or is mid-command: end it now."""
        with self._lock:
            self._busy.discard(session)
        session.abort()

    def forget(self, place: str) -> None:
        """`place` is gone (a builder lost): end its idle sessions."""
        with self._lock:
            idle = self._idle.pop(place, [])
        for session in idle:
            session.abort()

    def abort_all(self) -> None:
        """End every session now, busy or idle (the run is interrupted)."""
        with self._lock:
            self._closed = True
            sessions = [*self._busy, *(s for idle in self._idle.values() for s in idle)]
            self._busy.clear()
            self._idle.clear()
        for session in sessions:
            session.abort()

    def close(self) -> None:
        """End the idle sessions; no session may be taken afterwards."""
        with self._lock:
            self._closed = True
            idle = [s for sessions in self._idle.values() for s in sessions]
            self._idle.clear()
        for session in idle:
            session.close()


def store_opener(
    *,
    store: LocalStore,
    machines: Mapping[str, Machine],
    masters: ControlMasters,
    environ: Mapping[str, str],
) -> Callable[[str], StoreSession]:
    """How a run opens a session: the local ``nix-store --serve`` for `HERE`, else the
    machine's store over its control master (`nixdist.store.remote.open_remote`)."""

    def open_session(place: str) -> RemoteStore:
        if place == HERE:
            return ServeStore.open_local(store, environ)
        target = target_for_machine(machines[place], environ)
        try:
            return open_remote(target, masters, environ)
        except ServeGreetingError as err:
            if not err.eof:
                raise
            # Once more: Nix (2.8) opening a store for the first time can lose a race with
            # another process doing the same ("creating symlink … File exists"), and a run
            # opens several sessions with a builder at once.
            time.sleep(REOPEN_DELAY_S)
            return open_remote(target, masters, environ)

    return open_session
