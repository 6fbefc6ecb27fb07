"""One ``nixdist build`` run: the planned graph, built over the builders and here.

The main thread owns the graph (`nixdist.scheduler.graph.BuildGraph`) and is the only one that
moves it. It hands every ready derivation, longest critical path first, to the machine the
hook's own picker chooses (`MachinePicker.decide`: Nix's rules, this host's slots — shared
with every hook and ``nixdist build`` of the machine —, health and the builders' load
reports), or to a local ``nix-store --realise`` when no builder can take it and local jobs are
allowed; then it waits for a build to come back. Each build runs in a thread of its own:

    inputs   the closure its builder lacks, each path from where it is (`engine.copies`)
    build    BuildDerivation on the builder's session; its log into Nix's log store
    outputs  their path infos, read from the builder: the outputs stay there until a later
             build or the end of the run needs them somewhere else

Failover is the hook's: a builder that fails under a build (connection lost, protocol broken)
is marked down (`MachinePicker.mark_down`, seen by every hook for its back-off) and the build
is handed out again; outputs that were only on that builder are built again. A build that ran
and failed is the derivation's failure: its dependents can never be built, and without
``--keep-going`` nothing new starts. Ctrl-C aborts every session (the remote builds end with
their sessions) and records the attempts as interrupted. No wait is unbounded: when nothing
runs and nothing can start for `STALL_S`, the run fails naming what it waited for.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, assert_never

from nixdist.engine.buildlog import BuildLog
from nixdist.engine.copies import SourceLostError, bring
from nixdist.engine.placement import Placement
from nixdist.engine.places import HERE
from nixdist.errors import (
    LocalProtocolError,
    NixdistError,
    ProtocolError,
    StoreRefusedError,
    TransportError,
)
from nixdist.hook.picker import SUPPORTED_SCHEMES
from nixdist.model.derivation import to_basic
from nixdist.model.store_path import StorePath
from nixdist.protocol.serve import BuildStatus
from nixdist.scheduler.graph import NodeStatus
from nixdist.scheduler.policy import (
    Accept,
    Decision,
    Decline,
    Postpone,
    can_build_locally,
    render_no_machine_report,
    render_rejections,
)
from nixdist.state.paths import uploads_dir
from nixdist.state.rows import Outcome, Phase
from nixdist.store.claims import UploadClaims
from nixdist.store.daemon import DaemonStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from nixdist.engine.console import Console
    from nixdist.engine.places import Places
    from nixdist.engine.sessions import SessionPool, StoreSession
    from nixdist.model.derivation import Derivation
    from nixdist.model.local_store import LocalStore
    from nixdist.model.machines import Machine
    from nixdist.model.path_info import PathInfo
    from nixdist.model.request import BuildRequest
    from nixdist.protocol.serve import BuildOptions, BuildResult
    from nixdist.scheduler.graph import BuildGraph
    from nixdist.scheduler.policy import LocalCapabilities
    from nixdist.settings import Settings
    from nixdist.state.history import BuildRecord, History
    from nixdist.state.slots import SlotLease

#: How often the main thread looks at the slots again while builds wait for a free one.
POLL_S: Final = 0.1
#: How long the run may go without any build running or starting before it gives up.
STALL_S: Final = 600.0


class Picker(Protocol):
    """What a run needs of `nixdist.hook.picker.MachinePicker`: a machine (and its slot) for
    a ready derivation, the decisions and attempts written down, lost builders marked down."""

    @property
    def machines(self) -> Sequence[Machine]: ...

    @property
    def local(self) -> LocalCapabilities: ...

    @property
    def config(self) -> Settings: ...

    @property
    def history(self) -> History: ...

    def decide(
        self, request: BuildRequest, *, among: frozenset[str] | None = None
    ) -> tuple[Decision, SlotLease | None]: ...

    def record(self, request: BuildRequest, decision: Decision) -> None: ...

    def mark_down(self, machine: Machine, reason: str) -> None: ...

    def down_reason(self, uri: str) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    keep_going: bool = False
    local_jobs: int = 0  # builds this host may run itself at once (0: none)
    substitute: bool = False  # builders-use-substitutes
    build: BuildOptions


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    drv_path: str
    place: str  # a builder's URI, or HERE


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    drv_path: str
    place: str
    message: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost:
    """A store failed under the build (not the build): hand the build out again."""

    drv_path: str
    machine: Machine
    reason: str


Event = Built | Failed | Lost


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    built: int
    failed: tuple[Failed, ...]
    cannot_build: tuple[str, ...]
    timed_out: bool


class Run:
    """Drives one graph to its end (`execute`)."""

    def __init__(
        self,
        *,
        graph: BuildGraph,
        drvs: Mapping[str, Derivation],
        roots: frozenset[str],
        picker: Picker,
        places: Places,
        sessions: SessionPool,
        store: LocalStore,
        environ: Mapping[str, str],
        console: Console,
        options: RunOptions,
    ) -> None:
        self.graph = graph
        self.drvs = drvs
        self.roots = roots  # the drv paths asked for: their outputs are needed at the end
        self.picker = picker
        self.places = places
        self.sessions = sessions
        self.store = store
        self.environ = environ
        self.console = console
        self.options = options
        self.events: queue.Queue[Event] = queue.Queue()
        self.threads: dict[str, threading.Thread] = {}
        self.building_here: set[str] = set()  # the local builds running (at most local_jobs)
        self.failures: list[Failed] = []
        self.cannot_build: list[str] = []
        self.attempts: dict[str, int] = {}
        self.stopping = False
        self.interrupted = threading.Event()  # set when the run is stopped (Ctrl-C)
        self.log = BuildLog(store, environ)
        self.placement = Placement(picker.machines)

    # -- the main thread -----------------------------------------------------------------

    def execute(self) -> RunReport:
        """Build everything the graph holds (or all that can be); Ctrl-C ends every build."""
        last_progress = time.monotonic()
        try:
            while not self.graph.done():
                self.console.progress(self.graph.counts(), self.graph.remaining_critical_path())
                if not self.stopping and self._hand_out():
                    last_progress = time.monotonic()
                if not self.threads and (self.stopping or not self.graph.ready()):
                    break  # nothing runs, nothing will start
                if self._take_event():
                    last_progress = time.monotonic()
                elif not self.threads and time.monotonic() - last_progress > STALL_S:
                    self._stall()
        except BaseException:
            self.interrupted.set()
            self.sessions.abort_all()
            for thread in list(self.threads.values()):
                thread.join(timeout=10)
            raise
        return RunReport(
            built=self.graph.counts().built,
            failed=tuple(self.failures),
            cannot_build=tuple(self.cannot_build),
            timed_out=any(f.timed_out for f in self.failures),
        )

    def _stall(self) -> None:
        for drv_path in self.graph.ready():
            message = f"no builder had a free slot for {STALL_S:g} s"
            self._fail(Failed(drv_path=drv_path, place="", message=message))

    def _hand_out(self) -> bool:
        """Start every ready derivation a machine (or this host) can take now.

        Once a request is postponed (every machine that fits is busy), the ready derivations
        that ask for the same (system, features, willing) are not asked about again in this
        pass: the answer would be the same, and each question takes Nix's main lock."""
        started = False
        busy: set[tuple[str, frozenset[str], bool]] = set()
        for drv_path in self.graph.ready():
            if self.stopping:
                break  # one failed in this pass, without --keep-going: nothing new starts
            local_free = len(self.building_here) < self.options.local_jobs
            request = self.graph.request(drv_path, am_willing=local_free)
            kind = (request.system, request.required_features, local_free)
            if kind in busy:
                continue
            decision, lease = self.picker.decide(request)
            match decision:
                case Accept():
                    assert lease is not None  # noqa: S101 - an Accept holds a slot
                    placed = self._place(drv_path, request, decision, lease)
                    started = started or placed
                case Postpone():
                    busy.add(kind)
                case Decline():
                    if can_build_locally(request, self.picker.local):
                        self.picker.record(request, decision)
                        self.building_here.add(drv_path)
                        self._start(drv_path, self._build_here)
                        started = True
                        continue
                    if self._waits_here(request):
                        busy.add(kind)  # built here once a local build ends
                        continue
                    self.picker.record(request, decision)
                    report = render_no_machine_report(request, self.picker.machines)
                    why = "".join(f"\n  {line}" for line in render_rejections(decision))
                    self._fail(Failed(drv_path=drv_path, place="", message=report + why))
                case _:  # pragma: no cover - exhaustiveness
                    assert_never(decision)
        return started

    def _waits_here(self, request: BuildRequest) -> bool:
        """Whether `request`, which no machine can take, is for this host once one of its
        local slots (all taken now) is free: Nix builds a declined derivation when it has one."""
        willing = dataclasses.replace(request, am_willing=True)
        return self.options.local_jobs > 0 and can_build_locally(willing, self.picker.local)

    def _place(
        self, drv_path: str, request: BuildRequest, accepted: Accept, lease: SlotLease
    ) -> bool:
        """Start `drv_path` on the accepted machine, or on one that finishes it clearly sooner
        (`engine.placement`), or not yet (that one is about to be free); whether it started."""
        now = time.monotonic()
        work = self.graph.estimate(drv_path)
        better = self.placement.better(
            request, work, accepted.machine, usable=self._usable, now=now
        )
        decision: Decision = accepted
        chosen: SlotLease | None = lease
        if better is not None:
            lease.release()
            if better.available_in > 0:
                return False  # waits for the faster machine's slot
            decision, chosen = self.picker.decide(request, among=frozenset({better.machine.uri}))
            if not isinstance(decision, Accept):  # another client took it: Nix's choice then
                decision, chosen = self.picker.decide(request)
        if not isinstance(decision, Accept) or chosen is None:
            return False  # every slot was taken meanwhile: the next pass decides again
        self.picker.record(request, decision)
        self.placement.started(drv_path, decision.machine, work, now)
        self._start(drv_path, self._build_remotely, decision.machine, chosen)
        return True

    def _usable(self, machine: Machine) -> bool:
        return machine.scheme in SUPPORTED_SCHEMES and self.picker.down_reason(machine.uri) is None

    def _start(self, drv_path: str, target: Callable[..., Event], *args: object) -> None:
        self.graph.start(drv_path)
        self.attempts[drv_path] = self.attempts.get(drv_path, 0) + 1
        thread = threading.Thread(
            target=self._run_thread, args=(drv_path, target, *args), daemon=True
        )
        self.threads[drv_path] = thread
        thread.start()

    def _run_thread(self, drv_path: str, target: Callable[..., Event], *args: object) -> None:
        try:
            event = target(drv_path, *args)
        except BaseException as err:  # noqa: BLE001 - reported to the main thread
            event = Failed(drv_path=drv_path, place="", message=f"{type(err).__name__}: {err}")
        self.events.put(event)

    def _take_event(self) -> bool:
        """Wait (a little) for builds to come back; take every one that has."""
        try:
            event = self.events.get(timeout=POLL_S)
        except queue.Empty:
            return False
        while True:
            self._handle(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return True

    def _handle(self, event: Event) -> None:
        self.threads.pop(event.drv_path).join()
        self.placement.ended(event.drv_path)
        self.building_here.discard(event.drv_path)  # however it ended, even by an exception
        match event:
            case Built(drv_path=drv_path, place=place):
                self.graph.finish(drv_path)
                self.console.built(drv_path, place)
            case Failed():
                self._fail(event)
            case Lost(drv_path=drv_path, machine=machine, reason=reason):
                self._lost(drv_path, machine, reason)
            case _:  # pragma: no cover - exhaustiveness
                assert_never(event)

    def _fail(self, failed: Failed) -> None:
        self.failures.append(failed)
        self.console.failed(failed.drv_path, failed.place, failed.message)
        cut = self.graph.fail(failed.drv_path)
        self.cannot_build.extend(cut)
        if not self.options.keep_going:
            self.stopping = True

    def _lost(self, drv_path: str, machine: Machine, reason: str) -> None:
        """`machine` failed under the build of `drv_path`: down, and the build again (or,
        after max-attempts builders, failed); what only `machine` had and is still needed
        is built again too."""
        self.picker.mark_down(machine, reason)
        self.places.forget_place(machine.uri)
        self.sessions.forget(machine.uri)
        attempts = self.attempts.get(drv_path, 1)
        if attempts >= self.picker.config.max_attempts:
            message = f"gave up after {attempts} builders; the last, '{machine.uri}': {reason}"
            self._fail(Failed(drv_path=drv_path, place=machine.uri, message=message))
            if self.stopping:
                return  # nothing new starts: nothing is built again
        elif self.stopping:  # after a failure without --keep-going nothing new starts
            self.graph.requeue(drv_path)
            return
        else:
            self.console.moved(drv_path, machine.uri, reason)
            self.graph.requeue(drv_path)
        for node in self._lost_outputs():
            self.console.moved(node, machine.uri, "its outputs were only there")
            self.graph.reopen(node)

    def _lost_outputs(self) -> list[str]:
        """The built derivations to build again, inputs first: those whose outputs are valid
        nowhere any more and still needed — asked for, or by a build not started yet."""
        again: set[str] = set()
        for node in reversed(self.graph.nodes()):  # dependents first
            if self.graph.status(node) is not NodeStatus.BUILT or not self._outputs_gone(node):
                continue
            if node in self.roots or any(
                d in again or self.graph.status(d) in {NodeStatus.WAITING, NodeStatus.READY}
                for d in self.graph.dependents(node)
            ):
                again.add(node)
        return [node for node in self.graph.nodes() if node in again]

    def _outputs_gone(self, drv_path: str) -> bool:
        outputs = self.drvs[drv_path].outputs
        return any(
            not self.places.where(StorePath.parse(outputs[name].path))
            for name in self.graph.needed_outputs(drv_path)
        )

    # -- build threads ---------------------------------------------------------------------

    def _build_remotely(self, drv_path: str, machine: Machine, lease: SlotLease) -> Event:
        record = self.picker.history.start_build(
            drv_path=drv_path, machine=machine.uri, attempt=self.attempts[drv_path]
        )
        self.console.started(drv_path, machine.uri)
        try:
            return self._attempt(drv_path, machine, record)
        except BaseException as err:
            stopped = self.interrupted.is_set() or not isinstance(err, Exception)
            outcome = Outcome.INTERRUPTED if stopped else Outcome.ERROR  # ERROR: a bug of ours
            record.finish(outcome, error=f"{type(err).__name__}: {err}")
            raise
        finally:
            lease.release()

    def _attempt(self, drv_path: str, machine: Machine, record: BuildRecord) -> Event:
        """One attempt on `machine`: the outcome, with the builder's failures told apart."""
        try:
            session = self.sessions.take(machine.uri)
        except (TransportError, ProtocolError) as err:  # as the hook's picker: unusable now
            record.finish(Outcome.LOST, error=f"{record.phase}: {err}")
            return Lost(drv_path=drv_path, machine=machine, reason=str(err))
        try:
            event = self._on_builder(drv_path, machine, session, record)
        except NixdistError as err:
            self.sessions.discard(session)
            if self.interrupted.is_set():  # the session was ended under it: not the builder
                raise InterruptedError("the run was interrupted") from err
            return self._failure(err, drv_path, machine, session.name, record)
        if isinstance(event, Built):  # kept only when it is known to be between commands
            self.sessions.give_back(machine.uri, session)
        else:
            self.sessions.discard(session)
        return event

    def _failure(
        self, err: NixdistError, drv_path: str, machine: Machine, peer: str, record: BuildRecord
    ) -> Event:
        """What an error during an attempt on `machine` means: a lost builder (this one, or
        the one an input was relayed from), or the build's own failure."""
        if isinstance(err, SourceLostError) and err.place != HERE:  # here is no builder
            record.finish(Outcome.ERROR, error=f"{record.phase}: {err}")
            return Lost(drv_path=drv_path, machine=self._machine(err.place), reason=str(err))
        refused = isinstance(err, LocalProtocolError | StoreRefusedError)
        if err.peer == peer and not refused:
            record.finish(Outcome.LOST, error=f"{record.phase}: {err}")
            return Lost(drv_path=drv_path, machine=machine, reason=str(err))
        record.finish(Outcome.ERROR, error=str(err))
        return Failed(drv_path=drv_path, place=machine.uri, message=str(err))

    def _machine(self, uri: str) -> Machine:
        return next(m for m in self.picker.machines if m.uri == uri)

    def _on_builder(
        self, drv_path: str, machine: Machine, session: StoreSession, record: BuildRecord
    ) -> Event:
        drv = self.drvs[drv_path]
        record.enter(Phase.UPLOAD)
        by_path = (
            isinstance(session, DaemonStore) and not session.trusted and not drv.is_fixed_output
        )
        if by_path:
            # A daemon that does not trust us builds only content-addressed derivations from a
            # BasicDerivation, and takes no unsigned input-addressed path: it gets the .drv
            # closure (sources included) and builds by path, inputs too, as with Nix's hook.
            closure = self.places.closure([StorePath.parse(drv_path)])
        else:
            closure = self._input_closure(drv_path)
        claims = UploadClaims(uploads_dir(self.picker.config.state_dir, machine.uri))
        sent = bring(
            closure,
            to=machine.uri,
            destination=session,
            places=self.places,
            sessions=self.sessions,
            claims=claims,
            substitute=self.options.substitute,
        )
        record.note(upload_s=record.elapsed(), upload_bytes=sent.nar_bytes, upload_paths=sent.paths)
        self.console.sent(machine.uri, sent.nar_bytes)
        record.enter(Phase.BUILD)
        with self.log.capture(drv_path) as log:
            session.forward_log(log.fd, log.on_message)
            result = self._build(session, drv_path, closure, by_path=by_path)
        record.note(build_s=record.elapsed())
        if not result.is_success:
            late = result.status is BuildStatus.TIMED_OUT
            record.finish(Outcome.TIMED_OUT if late else Outcome.FAILED, error=result.error_msg)
            message = self.log.failure_message(drv_path, machine.uri, result.error_msg)
            return Failed(drv_path=drv_path, place=machine.uri, message=message, timed_out=late)
        outputs = [StorePath.parse(o.path) for o in drv.outputs.values() if o.path]
        infos = session.query_path_infos(outputs)
        self.places.add(infos.values(), machine.uri)
        record.finish(Outcome.BUILT)
        return Built(drv_path=drv_path, place=machine.uri)

    def _build(
        self,
        session: StoreSession,
        drv_path: str,
        closure: Mapping[StorePath, PathInfo],
        *,
        by_path: bool,
    ) -> BuildResult:
        drv = self.drvs[drv_path]
        path = StorePath.parse(drv_path)
        if by_path and isinstance(session, DaemonStore):
            results = session.build_paths([path])
            if path not in results:
                raise StoreRefusedError(f"'{session.name}' returned no result for {drv_path}")
            return results[path]
        basic = to_basic(drv, drv_path, [str(p) for p in closure if not p.is_derivation])
        return session.build_derivation(path, basic, self.options.build)

    def _input_closure(self, drv_path: str) -> dict[StorePath, PathInfo]:
        """The paths the build of `drv_path` needs: its sources, its inputs' outputs, and
        everything they refer to."""
        inputs = self.graph.inputs_of(drv_path)
        paths = [StorePath.parse(p) for p in inputs.srcs]
        for input_drv, name in inputs.outputs:
            output = self.drvs[input_drv].outputs[name]
            paths.append(StorePath.parse(output.path))
        closure = self.places.closure(paths)
        unknown = sorted(str(p) for p in paths if p not in closure)
        if unknown:
            raise NixdistError(f"inputs of {drv_path} are valid nowhere: {', '.join(unknown)}")
        return closure

    def _build_here(self, drv_path: str) -> Event:
        """Build `drv_path` with the local Nix (no builder can take it), its inputs first
        brought here."""
        from nixdist.engine.local import realise_here  # noqa: PLC0415 - rarely needed

        self.console.started(drv_path, HERE)
        closure = self._input_closure(drv_path)
        session = self.sessions.take(HERE)
        try:
            bring(closure, to=HERE, destination=session, places=self.places, sessions=self.sessions)
            message = realise_here(drv_path, self.environ)
            if message is None:
                drv = self.drvs[drv_path]
                outputs = [StorePath.parse(o.path) for o in drv.outputs.values() if o.path]
                infos = session.query_path_infos(session.query_closure(outputs))
                self.places.add(infos.values(), HERE)
        except SourceLostError as err:  # the builder an input came from: as for a remote build
            self.sessions.discard(session)
            return Lost(drv_path=drv_path, machine=self._machine(err.place), reason=str(err))
        except BaseException:
            self.sessions.discard(session)
            raise
        self.sessions.give_back(HERE, session)  # between commands, the build failed or not
        if message is not None:
            return Failed(drv_path=drv_path, place=HERE, message=message)
        return Built(drv_path=drv_path, place=HERE)
