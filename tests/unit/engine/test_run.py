"""`nixdist.engine.run.Run`, the main loop of ``nixdist build``, without a farm.

The middle layers are fakes: a picker (`FakePicker`: Nix's `choose` over real slot locks in
``tmp_path``, with a builder pinned per derivation where a story needs it), store sessions
(`FakeSessions`, `FakeSession`) over in-memory stores (`FakeStore`: what is valid there, and a
builder that is lost at connect, upload, build, query or as a copy's source), and the local
``nix-store --realise`` as a script on ``PATH``. The graph (`scheduler.graph.plan`), the places
(`engine.places.Places`), the copies (`engine.copies.bring` over `store.copy.copy_paths`), the
build logs and the history (a real state database) are the real ones. Each test is one story
of the run: builds handed out, failover, outputs lost with their builder built again,
failures with and without ``--keep-going``, builds here, Ctrl-C.

Nothing here sleeps: where a story needs an order between threads, a build waits for an event
(the console saying what was built, another build having started), bounded by `WAIT_S`.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Final, Protocol

import pytest

from nixdist.engine import run as run_module
from nixdist.engine.console import Console
from nixdist.engine.driver import EXIT_BUILD_FAILED, EXIT_OTHER, EXIT_TIMED_OUT, _failed_status
from nixdist.engine.places import HERE, Places
from nixdist.engine.run import Run, RunOptions
from nixdist.engine.sessions import Sessions
from nixdist.errors import StoreRefusedError, TransportError
from nixdist.hook.picker import SUPPORTED_SCHEMES
from nixdist.model.derivation import Derivation, DerivationOutput
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.local_store import DEFAULT_LOCAL_STORE
from nixdist.model.machines import Machine
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.protocol.serve import BuildOptions, BuildResult, BuildStatus
from nixdist.scheduler.graph import NodeStatus, plan
from nixdist.scheduler.policy import (
    Accept,
    Decision,
    Decline,
    LocalCapabilities,
    MachineState,
    Postpone,
    choose,
    machine_fits,
)
from nixdist.settings import Settings
from nixdist.state.advisory import Advisory
from nixdist.state.db import StateDB
from nixdist.state.history import History
from nixdist.state.rows import Outcome, Phase
from nixdist.state.slots import SlotDirectory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from nixdist.engine.run import RunReport
    from nixdist.engine.sessions import StoreSession
    from nixdist.model.derivation import BasicDerivation
    from nixdist.model.request import BuildRequest
    from nixdist.protocol.logjson import LogMessage
    from nixdist.state.slots import SlotLease

SYSTEM: Final = "x86_64-linux"
#: The longest any fake waits for another thread (a test that gets there has failed).
WAIT_S: Final = 5.0
B1: Final = "ssh://b1"
B2: Final = "ssh://b2"


# -- derivations ------------------------------------------------------------------------------


def drv_path(n: int) -> str:
    return f"/nix/store/{n:032d}-d{n}.drv"


def out_path(n: int) -> StorePath:
    return StorePath.parse(f"/nix/store/{n:032d}-d{n}")


def src_path(n: int) -> str:
    return f"/nix/store/{n:032d}-src{n}"


def make_drv(
    n: int, inputs: Iterable[int] = (), *, features: str = "", system: str = SYSTEM
) -> Derivation:
    """`dN`: one output, one source of its own (valid here), the outputs of `inputs`."""
    return Derivation(
        outputs={"out": DerivationOutput(path=str(out_path(n)))},
        input_drvs={drv_path(i): ("out",) for i in sorted(inputs)},
        input_srcs=(src_path(n),),
        platform=system,
        builder="/bin/sh",
        args=("-c", "true"),
        env={"requiredSystemFeatures": features} if features else {},
    )


def graph_of(*drvs: tuple[int, Derivation]) -> dict[str, Derivation]:
    return {drv_path(n): drv for n, drv in drvs}


def machine(uri: str, *, max_jobs: int = 1, features: str = "") -> Machine:
    return Machine(
        uri=uri,
        systems=(SYSTEM,),
        max_jobs=max_jobs,
        supported_features=frozenset(features.split()),
    )


def nar_of(path: StorePath) -> bytes:
    return f"NAR of {path}".encode()


def info_of(path: StorePath) -> PathInfo:
    nar = nar_of(path)
    return PathInfo(
        path=path,
        deriver=None,
        nar_hash=Hash.of(HashAlgo.SHA256, nar),
        references=frozenset(),
        nar_size=len(nar),
    )


def wait(event: threading.Event) -> None:
    if not event.wait(WAIT_S):
        raise AssertionError(f"waited {WAIT_S:g} s in vain")


def lost(name: str, reason: str) -> TransportError:
    """The error a session raises when its store goes away: it names that store."""
    err = TransportError(reason)
    err.peer = name
    return err


# -- the stores ------------------------------------------------------------------------------


class Farm:
    """Every store of a test (here and the builders), and what happened in them."""

    def __init__(self, drvs: dict[str, Derivation], places: Iterable[str]) -> None:
        self.drvs = drvs
        self.lock = threading.Lock()
        self.stores = {place: FakeStore(place, self) for place in places}
        self.results: dict[str, BuildResult] = {}  # drv path -> its build's result, anywhere
        self.builds: list[tuple[str, str]] = []  # (drv path, builder URI) as builds began
        self.problems: list[str] = []  # what a real store would have refused
        self.started = defaultdict[str, threading.Event](threading.Event)
        self._running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def build_began(self, drv_path: str, place: str) -> None:
        with self.lock:
            self.builds.append((drv_path, place))
            self._running[place] += 1
            self.peak[place] = max(self.peak[place], self._running[place])
        self.started[drv_path].set()

    def build_ended(self, place: str) -> None:
        with self.lock:
            self._running[place] -= 1

    def built_on(self, drv: int) -> list[str]:
        with self.lock:
            return [place for path, place in self.builds if path == drv_path(drv)]


class FakeStore:
    """One store: the paths valid in it and what goes wrong with it. A builder that is lost
    (`faults`: at an operation, or `lose` from a test's hook) stays lost for every session;
    a `hiccups` operation fails once, and the store stays."""

    def __init__(self, place: str, farm: Farm) -> None:
        self.place = place
        self.name = "local" if place == HERE else place.removeprefix("ssh://")
        self.farm = farm
        self.valid: dict[StorePath, PathInfo] = {}
        self.faults: dict[str, str] = {}  # operation -> the reason it is lost with
        self.hiccups: dict[str, str] = {}  # operation -> a reason it fails with once
        self.gone: str | None = None
        self.on_build: dict[str, Callable[[FakeSession], None]] = {}  # drv path -> hook
        self.realised: Path | None = None  # here: the fake nix-store's list of what it built

    def check(self, operation: str) -> None:
        with self.farm.lock:
            if self.gone is None and operation in self.faults:
                self.gone = self.faults[operation]
            gone = self.gone or self.hiccups.pop(operation, None)
        if gone is not None:
            raise lost(self.name, gone)

    def lose(self, reason: str) -> None:
        with self.farm.lock:
            self.gone = reason
        raise lost(self.name, reason)

    def paths(self) -> dict[StorePath, PathInfo]:
        if self.realised is not None and self.realised.exists():
            for built in self.realised.read_text().split():
                outputs = self.farm.drvs[built].outputs.values()
                self.add(info_of(StorePath.parse(o.path)) for o in outputs)
        with self.farm.lock:
            return dict(self.valid)

    def add(self, infos: Iterable[PathInfo]) -> None:
        with self.farm.lock:
            for info in infos:
                self.valid[info.path] = info


class FakeSession:
    """One session with a `FakeStore`, as `ServeStore` offers it to a run."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.name = store.name
        self.aborted = threading.Event()
        self._log_fd: int | None = None

    def _check(self, operation: str) -> None:
        if self.aborted.is_set():
            raise lost(self.name, "the session was aborted")
        self.store.check(operation)

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]:
        del lock, substitute
        self._check("query_valid")
        valid = self.store.paths()
        return frozenset(p for p in paths if p in valid)

    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        self._check("query")
        valid = self.store.paths()
        return {p: valid[p] for p in paths if p in valid}

    def query_closure(self, paths: Iterable[StorePath]) -> frozenset[StorePath]:
        self._check("query")
        valid = self.store.paths()
        seen: set[StorePath] = set()
        todo = [p for p in paths if p in valid]
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo.extend(r for r in valid[path].references if r in valid)
        return frozenset(seen)

    def dump(self, path: StorePath) -> Iterator[bytes]:
        self._check("dump")  # on the first chunk, as the destination reads it
        if path not in self.store.paths():
            raise lost(self.name, f"{path} is not valid here")
        yield nar_of(path)

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        self._check("upload")
        data = b"".join(nar)
        if len(data) != info.nar_size:
            self.store.farm.problems.append(f"{self.name}: {info.path} arrived short")
        self.store.add([info])

    def build_derivation(
        self, drv_path: StorePath, drv: BasicDerivation, options: BuildOptions
    ) -> BuildResult:
        del options
        path, farm = str(drv_path), self.store.farm
        farm.build_began(path, self.store.place)
        try:
            self._check("build")
            if hook := self.store.on_build.get(path):
                hook(self)
            valid = self.store.paths()
            missing = [p for p in drv.input_srcs if StorePath.parse(p) not in valid]
            if missing:
                farm.problems.append(f"{self.name} built {path} without {missing}")
            result = farm.results.get(path, BuildResult(status=BuildStatus.BUILT))
            self._log(f"building {drv.name} on {self.name}\n")
            if result.is_success:
                self.store.add(info_of(StorePath.parse(o.path)) for o in drv.outputs.values())
            else:
                self._log(f"{drv.name}: it did not work\n")
            return result
        finally:
            farm.build_ended(self.store.place)

    def _log(self, text: str) -> None:
        if self._log_fd is not None:
            os.write(self._log_fd, text.encode())

    def forward_log(self, fd: int, on_message: Callable[[LogMessage], None] | None = None) -> None:
        del on_message
        self._log_fd = fd

    def abort(self) -> None:
        self.aborted.set()

    def close(self) -> None:
        self._log_fd = None


class RecordingSessions(Sessions):
    """The run's real session pool over the farm's stores, remembering the places it was
    told to forget."""

    def __init__(self, farm: Farm) -> None:
        super().__init__(self._open_fake)
        self.farm = farm
        self.forgotten: list[str] = []

    def _open_fake(self, place: str) -> StoreSession:
        store = self.farm.stores[place]
        store.check("connect")
        return FakeSession(store)

    def forget(self, place: str) -> None:
        self.forgotten.append(place)
        super().forget(place)


# -- the picker and the console ---------------------------------------------------------------


class FakePicker:
    """`MachinePicker` without probes, health or ssh: Nix's `choose` over this test's slot
    locks. A derivation in `pins` is offered only its pinned builder while that one is up."""

    def __init__(
        self,
        machines: Sequence[Machine],
        *,
        slots: SlotDirectory,
        config: Settings,
        history: History,
        local: LocalCapabilities,
    ) -> None:
        self.machines = tuple(machines)
        self.local = local
        self.config = config
        self.history = history
        self.slots = slots
        self.pins: dict[str, str] = {}
        self.down: dict[str, str] = {}
        self.accepted: list[tuple[str, str]] = []  # (drv path, URI): a slot handed out
        self.recorded: list[tuple[str, str]] = []  # (drv path, decision) written down
        self.leases: list[SlotLease] = []
        self.before_deciding: Callable[[BuildRequest], None] | None = None
        self.decided = defaultdict[str, threading.Event](threading.Event)  # by drv path

    def decide(
        self, request: BuildRequest, *, among: frozenset[str] | None = None
    ) -> tuple[Decision, SlotLease | None]:
        if self.before_deciding is not None:
            self.before_deciding(request)
        pin = self.pins.get(request.drv_path)
        if pin is not None and pin not in self.down:
            among = frozenset({pin}) if among is None else among & {pin}
        with self.slots.main_lock():
            tries = [
                self.slots.try_slot(m)
                if machine_fits(request, m) and (among is None or m.uri in among)
                else None
                for m in self.machines
            ]
            states = [
                MachineState(machine=m, load=0, free_slot=False)
                if t is None
                else MachineState(
                    machine=m, load=t.load, free_slot=t.free_slot, down_reason=self.down.get(m.uri)
                )
                for m, t in zip(self.machines, tries, strict=True)
            ]
            decision = choose(request, self.local, states, supported_schemes=SUPPORTED_SCHEMES)
            chosen = tries[decision.index] if isinstance(decision, Accept) else None
            kept = None if chosen is None else chosen.lease
            for t in tries:
                if t is not None and t.lease is not None and t.lease is not kept:
                    t.lease.release()
        if isinstance(decision, Accept) and kept is not None:
            self.accepted.append((request.drv_path, decision.machine.uri))
            self.leases.append(kept)
        self.decided[request.drv_path].set()
        return decision, kept

    def record(self, request: BuildRequest, decision: Decision) -> None:
        word = {Accept: "accept", Postpone: "postpone", Decline: "decline"}[type(decision)]
        self.recorded.append((request.drv_path, word))

    def mark_down(self, machine: Machine, reason: str) -> None:
        self.down[machine.uri] = reason

    def down_reason(self, uri: str) -> str | None:
        return self.down.get(uri)


class RecordingConsole(Console):
    """The real console (plain lines, to a buffer), with what it was told kept as tuples."""

    def __init__(self) -> None:
        super().__init__(io.StringIO(), live=False)
        self._told_lock = threading.Lock()
        self.told: list[tuple[str, str, str, str]] = []  # (event, drv path, place, words)
        self._events = defaultdict[tuple[str, str], threading.Event](threading.Event)

    def _tell(self, event: str, drv_path: str, place: str, words: str = "") -> None:
        with self._told_lock:
            self.told.append((event, drv_path, place, words))
            happened = self._events[event, drv_path]
        happened.set()

    def wait_for(self, event: str, drv: int) -> None:
        with self._told_lock:
            happened = self._events[event, drv_path(drv)]
        if not happened.wait(WAIT_S):
            raise AssertionError(f"the console was never told {event} d{drv}")

    def events(self, event: str) -> list[tuple[str, str, str]]:
        with self._told_lock:
            return [(d, p, w) for e, d, p, w in self.told if e == event]

    def started(self, drv_path: str, place: str) -> None:
        super().started(drv_path, place)
        self._tell("started", drv_path, place)

    def built(self, drv_path: str, place: str) -> None:
        super().built(drv_path, place)
        self._tell("built", drv_path, place)

    def failed(self, drv_path: str, place: str, message: str) -> None:
        super().failed(drv_path, place, message)
        self._tell("failed", drv_path, place, message)

    def moved(self, drv_path: str, machine: str, reason: str) -> None:
        super().moved(drv_path, machine, reason)
        self._tell("moved", drv_path, machine, reason)


# -- one test's world ---------------------------------------------------------------------------

FAKE_NIX_STORE: Final = """#!/bin/sh
# nix-store --realise DRV --builders '' --max-jobs 1, as nixdist runs it for a build here
printf '%s\\n' "$*" >> "$FAKE_NIX_CALLS"
case " $FAKE_NIX_FAILS " in
*" $2 "*) printf "error: builder for '%s' failed with exit code 1\\n" "$2" >&2; exit 1 ;;
esac
printf '%s\\n' "$2" >> "$FAKE_REALISED"
"""


class World:
    """The fakes of one test around one real graph, places, history and build log."""

    def __init__(
        self,
        tmp_path: Path,
        drvs: dict[str, Derivation],
        machines: Sequence[Machine],
        *,
        local: LocalCapabilities | None = None,
        max_attempts: int = 3,
    ) -> None:
        state = tmp_path / "state"
        self.db = StateDB.open(state)
        self.picker = FakePicker(
            machines,
            slots=SlotDirectory(tmp_path / "load"),
            config=Settings(state_dir=state, max_attempts=max_attempts),
            history=History(Advisory(self.db)),
            local=local or LocalCapabilities(system=SYSTEM, max_jobs=0),
        )
        self.farm = Farm(drvs, [HERE, *(m.uri for m in machines)])
        self.sessions = RecordingSessions(self.farm)
        self.console = RecordingConsole()
        self.places = Places()
        sources = [info_of(StorePath.parse(p)) for d in drvs.values() for p in d.input_srcs]
        self.here.add(sources)
        self.places.add(sources, HERE)  # as the driver's look here does
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "nix-store").write_text(FAKE_NIX_STORE)
        (bin_dir / "nix-store").chmod(0o755)
        self.nix_calls = tmp_path / "nix-calls"
        self.here.realised = tmp_path / "realised"
        self.environ = {
            "PATH": str(bin_dir),
            "NIX_LOG_DIR": str(tmp_path / "log"),
            "FAKE_NIX_CALLS": str(self.nix_calls),
            "FAKE_REALISED": str(self.here.realised),
            "FAKE_NIX_FAILS": "",  # the drv paths nix-store --realise fails, space-separated
        }

    @property
    def here(self) -> FakeStore:
        return self.farm.stores[HERE]

    def store(self, uri: str) -> FakeStore:
        return self.farm.stores[uri]

    def run(self, *roots: int, keep_going: bool = False, local_jobs: int = 0) -> Run:
        wanted = [drv_path(n) for n in roots]
        return Run(
            graph=plan(self.farm.drvs, [(path, None) for path in wanted]),
            drvs=self.farm.drvs,
            roots=frozenset(wanted),
            picker=self.picker,
            places=self.places,
            sessions=self.sessions,
            store=DEFAULT_LOCAL_STORE,
            environ=self.environ,
            console=self.console,
            options=RunOptions(keep_going=keep_going, local_jobs=local_jobs, build=BuildOptions()),
        )

    def execute(self, *roots: int, keep_going: bool = False, local_jobs: int = 0) -> RunReport:
        run = self.run(*roots, keep_going=keep_going, local_jobs=local_jobs)
        report = run.execute()
        self.check_after(run)
        return report

    def check_after(self, run: Run) -> None:
        """What holds after every run: nothing left running, held or half-built."""
        assert not run.threads
        assert self.sessions.in_use == 0
        assert all(not lease.held for lease in self.picker.leases)
        assert self.farm.problems == []

    def attempts(self, drv: int) -> list[tuple[str, Outcome, Phase]]:
        """The history's attempts at `dN`, oldest first: (machine, outcome, phase)."""
        rows = reversed(self.db.builds(drv_path=drv_path(drv)))
        return [(row.machine, row.status, row.phase) for row in rows]


@pytest.fixture(autouse=True)
def _stall_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that waits for nothing gives up after 2 s here, not 10 minutes: a regression
    that leaves a derivation waiting fails the test instead of hanging it."""
    monkeypatch.setattr(run_module, "STALL_S", 2.0)


class MakeWorld(Protocol):
    def __call__(
        self,
        drvs: dict[str, Derivation],
        machines: Sequence[Machine],
        *,
        local: LocalCapabilities | None = None,
        max_attempts: int = 3,
    ) -> World: ...


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[MakeWorld]:
    made: list[World] = []

    def make(
        drvs: dict[str, Derivation],
        machines: Sequence[Machine],
        *,
        local: LocalCapabilities | None = None,
        max_attempts: int = 3,
    ) -> World:
        world = World(
            tmp_path / f"world{len(made)}", drvs, machines, local=local, max_attempts=max_attempts
        )
        made.append(world)
        return world

    yield make
    for world in made:
        world.db.close()


# -- handing out ----------------------------------------------------------------------------------


def test_a_chain_is_built_in_order_on_one_builder(make_world: MakeWorld) -> None:
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2, [1])), (3, make_drv(3, [2])))
    world = make_world(drvs, [machine(B1, max_jobs=2)])
    report = world.execute(3)
    assert report == type(report)(built=3, failed=(), cannot_build=(), timed_out=False)
    assert world.farm.builds == [(drv_path(1), B1), (drv_path(2), B1), (drv_path(3), B1)]
    assert world.picker.accepted == [(drv_path(n), B1) for n in (1, 2, 3)]
    assert world.picker.recorded == [(drv_path(n), "accept") for n in (1, 2, 3)]
    # Each build found its inputs on the builder (`check_after`: no problems): the sources
    # came from here, each output stayed where it was built.
    assert {StorePath.parse(src_path(n)) for n in (1, 2, 3)} <= world.store(B1).valid.keys()
    assert all(world.places.where(out_path(n)) == {B1} for n in (1, 2, 3))
    assert [world.attempts(n) for n in (1, 2, 3)] == [[(B1, Outcome.BUILT, Phase.DONE)]] * 3
    assert [d for d, _, _ in world.console.events("built")] == [drv_path(n) for n in (1, 2, 3)]


def test_a_wide_graph_is_spread_over_two_builders(make_world: MakeWorld) -> None:
    drvs = graph_of(*((n, make_drv(n)) for n in range(1, 5)))
    world = make_world(drvs, [machine(B1), machine(B2)])
    # Builds go in pairs: each waits for another to be building, which with one slot per
    # builder can only be on the other one.
    pairs = threading.Barrier(2, timeout=WAIT_S)

    def in_pairs(session: FakeSession) -> None:
        del session
        pairs.wait()

    for uri in (B1, B2):
        world.store(uri).on_build = dict.fromkeys(map(drv_path, range(1, 5)), in_pairs)
    report = world.execute(1, 2, 3, 4)
    assert report.built == 4
    assert not report.failed
    # Every build ran where the picker gave it a slot, and never two on one slot.
    assert sorted(world.farm.builds) == sorted(world.picker.accepted)
    assert Counter(place for _, place in world.farm.builds) == {B1: 2, B2: 2}
    assert world.farm.peak == {B1: 1, B2: 1}


# -- failover ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "phase"),
    [
        ("connect", Phase.CONNECT),
        ("upload", Phase.UPLOAD),
        ("build", Phase.BUILD),
        ("query", Phase.BUILD),  # the outputs' infos, read after the build
    ],
)
def test_a_builder_lost_under_a_build_is_marked_down_and_the_build_moves(
    make_world: MakeWorld, operation: str, phase: Phase
) -> None:
    drvs = graph_of((1, make_drv(1)))
    world = make_world(drvs, [machine(B1), machine(B2)])
    world.store(B1).faults[operation] = "Connection reset by peer"
    report = world.execute(1)
    assert report.built == 1
    assert not report.failed
    assert world.picker.down == {B1: "Connection reset by peer"}
    assert world.farm.built_on(1) == ([] if operation in {"connect", "upload"} else [B1]) + [B2]
    assert world.attempts(1) == [(B1, Outcome.LOST, phase), (B2, Outcome.BUILT, Phase.DONE)]
    assert world.places.where(out_path(1)) == {B2}
    assert world.console.events("moved") == [(drv_path(1), B1, "Connection reset by peer")]
    assert B1 in world.sessions.forgotten


def test_a_build_gives_up_after_max_attempts_builders(make_world: MakeWorld) -> None:
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2, [1])))
    world = make_world(drvs, [machine(B1), machine(B2)], max_attempts=2)
    for uri in (B1, B2):
        world.store(uri).faults["build"] = f"{uri} went away"
    report = world.execute(2)
    assert report.built == 0
    (failed,) = report.failed
    assert (failed.drv_path, failed.place) == (drv_path(1), B2)
    assert failed.message == f"gave up after 2 builders; the last, '{B2}': {B2} went away"
    assert report.cannot_build == (drv_path(2),)
    assert world.picker.down.keys() == {B1, B2}


def test_a_builder_that_refuses_fails_the_build_and_stays_up(make_world: MakeWorld) -> None:
    drvs = graph_of((1, make_drv(1)))
    world = make_world(drvs, [machine(B1), machine(B2)])

    def refuse(session: FakeSession) -> None:
        err = StoreRefusedError("path is not valid: unsigned")
        err.peer = session.name
        raise err

    world.store(B1).on_build[drv_path(1)] = refuse
    report = world.execute(1)
    assert [(f.drv_path, f.place, f.message) for f in report.failed] == [
        (drv_path(1), B1, "path is not valid: unsigned")
    ]
    assert world.picker.down == {}
    assert world.attempts(1) == [(B1, Outcome.ERROR, Phase.BUILD)]


def test_outputs_only_the_lost_builder_had_are_built_again_if_still_needed(
    make_world: MakeWorld,
) -> None:
    """d1 → d2 → d3 (asked for), d4 → d5 (asked for, also needs d6), d7 (asked for).

    d1, d2, d4, d6 and d7 are built on b1, d3 on b2 (so d2's output is on b2 too), and b1
    is lost under d6 once d3, d4 and d7 are built. Only b1 had the outputs of d1, d4 and d7:
    d4's is needed by d5, which has not started, and d7's was asked for, so both are built
    again; d1's is needed by nothing left to build, so it is not.
    """
    drvs = graph_of(
        (1, make_drv(1)),
        (2, make_drv(2, [1])),
        (3, make_drv(3, [2])),
        (4, make_drv(4)),
        (5, make_drv(5, [4, 6])),
        (6, make_drv(6)),
        (7, make_drv(7)),
    )
    world = make_world(drvs, [machine(B1, max_jobs=4), machine(B2, max_jobs=2)])
    world.picker.pins = {drv_path(n): B1 for n in (1, 2, 4, 6, 7)} | {drv_path(3): B2}

    def lose_b1(session: FakeSession) -> None:
        for n in (3, 4, 7):
            world.console.wait_for("built", n)
        session.store.lose("b1 was switched off")

    world.store(B1).on_build[drv_path(6)] = lose_b1
    report = world.execute(3, 5, 7)
    assert report.built == 7
    assert not report.failed
    assert world.farm.built_on(6) == [B1, B2]
    assert world.farm.built_on(4) == [B1, B2]
    assert world.farm.built_on(7) == [B1, B2]
    assert world.farm.built_on(1) == [B1]  # not needed any more: not built again
    assert world.farm.built_on(2) == [B1]  # its output is on b2 as well
    assert world.console.events("moved") == [
        (drv_path(6), B1, "b1 was switched off"),
        (drv_path(4), B1, "its outputs were only there"),
        (drv_path(7), B1, "its outputs were only there"),
    ]
    for n in (3, 5, 7):  # what was asked for is somewhere to fetch it from
        assert world.places.where(out_path(n)) == {B2}
    assert world.attempts(6) == [(B1, Outcome.LOST, Phase.BUILD), (B2, Outcome.BUILT, Phase.DONE)]


def test_a_lost_source_builder_is_marked_down_and_the_build_retried(
    make_world: MakeWorld,
) -> None:
    """d1 is built on b1; d2 needs a feature only b2 has, and d1's output is relayed from b1,
    which dies as it sends it: b1 is down, d1 is built again on b2, and d2 after it."""
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2, [1], features="big")))
    world = make_world(drvs, [machine(B1), machine(B2, features="big")])
    world.store(B1).faults["dump"] = "b1: broken pipe"
    report = world.execute(2)
    assert report.built == 2
    assert not report.failed
    assert world.picker.down == {B1: "b1: broken pipe"}
    assert world.farm.built_on(1) == [B1, B2]
    assert world.farm.built_on(2) == [B2]
    assert world.attempts(2) == [(B2, Outcome.ERROR, Phase.UPLOAD), (B2, Outcome.BUILT, Phase.DONE)]
    assert world.console.events("moved") == [
        (drv_path(2), B1, "b1: broken pipe"),
        (drv_path(1), B1, "its outputs were only there"),
    ]


# -- failures -----------------------------------------------------------------------------------


def failing_graph() -> dict[str, Derivation]:
    """d1 (fails) → d2, and d3 on its own: d1's chain is the longer, so it starts first."""
    return graph_of((1, make_drv(1)), (2, make_drv(2, [1])), (3, make_drv(3)))


@pytest.mark.parametrize(
    ("status", "outcome", "exit_status"),
    [
        (BuildStatus.PERMANENT_FAILURE, Outcome.FAILED, EXIT_BUILD_FAILED),
        (BuildStatus.TIMED_OUT, Outcome.TIMED_OUT, EXIT_TIMED_OUT),
    ],
)
def test_a_failed_build_stops_new_starts_without_keep_going(
    make_world: MakeWorld, status: BuildStatus, outcome: Outcome, exit_status: int
) -> None:
    world = make_world(failing_graph(), [machine(B1)])
    world.farm.results[drv_path(1)] = BuildResult(status=status, error_msg="exit code 1")
    # d1 fails only once d3 has been asked about (and postponed: b1's one slot is d1's).
    world.store(B1).on_build[drv_path(1)] = lambda _: wait(world.picker.decided[drv_path(3)])
    run = world.run(2, 3)
    report = run.execute()
    world.check_after(run)
    (failed,) = report.failed
    assert (failed.drv_path, failed.place) == (drv_path(1), B1)
    assert failed.message == (
        f"exit code 1 (on '{B1}');\nlast 2 log lines:\n> building d1 on b1\n> d1: it did not work"
    )
    assert report.cannot_build == (drv_path(2),)
    assert report.built == 0
    assert report.timed_out is (status is BuildStatus.TIMED_OUT)
    assert _failed_status(report) == exit_status
    assert world.farm.builds == [(drv_path(1), B1)]  # d3 never started
    assert run.graph.status(drv_path(3)) is NodeStatus.READY
    assert world.attempts(1) == [(B1, outcome, Phase.BUILD)]
    assert world.picker.down == {}


def test_keep_going_builds_the_independent_branch(make_world: MakeWorld) -> None:
    world = make_world(failing_graph(), [machine(B1)])
    world.farm.results[drv_path(1)] = BuildResult(status=BuildStatus.PERMANENT_FAILURE)
    report = world.execute(2, 3, keep_going=True)
    assert [f.drv_path for f in report.failed] == [drv_path(1)]
    assert report.failed[0].message.startswith(f"builder for '{drv_path(1)}' failed (on '{B1}')")
    assert report.cannot_build == (drv_path(2),)
    assert report.built == 1
    assert world.farm.built_on(3) == [B1]
    assert _failed_status(report) == EXIT_BUILD_FAILED


def test_what_no_machine_can_take_fails_with_the_no_machine_text(make_world: MakeWorld) -> None:
    drvs = graph_of(
        (1, make_drv(1, system="aarch64-linux")), (2, make_drv(2, [1])), (3, make_drv(3))
    )
    world = make_world(drvs, [machine(B1)])
    report = world.execute(2, 3, keep_going=True)
    (failed,) = report.failed
    assert (failed.drv_path, failed.place) == (drv_path(1), "")
    assert failed.message.startswith(
        "Failed to find a machine for remote build!\n"
        f"derivation: {drv_path(1).rsplit('/', 1)[1]}\n"
        "required (system, features): (aarch64-linux, )\n"
    )
    assert failed.message.endswith(
        f"\n  {B1}: does not build aarch64-linux (systems: x86_64-linux)"
    )
    assert report.cannot_build == (drv_path(2),)
    assert world.farm.built_on(3) == [B1]
    assert world.picker.recorded[0] == (drv_path(1), "decline")
    assert _failed_status(report) == EXIT_OTHER


# -- here ---------------------------------------------------------------------------------------


def test_what_only_this_host_can_build_is_built_here(make_world: MakeWorld) -> None:
    """d1 needs kvm, which only this host has: nix-store --realise builds it here, and d2 on
    b1 gets d1's output from here."""
    drvs = graph_of((1, make_drv(1, features="kvm")), (2, make_drv(2, [1])))
    local = LocalCapabilities(system=SYSTEM, system_features=frozenset({"kvm"}), max_jobs=1)
    world = make_world(drvs, [machine(B1)], local=local)
    report = world.execute(2, local_jobs=1)
    assert report.built == 2
    assert not report.failed
    assert world.nix_calls.read_text() == f"--realise {drv_path(1)} --builders  --max-jobs 1\n"
    assert world.farm.builds == [(drv_path(2), B1)]
    assert world.places.where(out_path(1)) == {HERE, B1}
    assert world.console.events("built") == [(drv_path(1), HERE, ""), (drv_path(2), B1, "")]
    assert world.attempts(1) == []  # the history holds remote attempts


# -- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_aborts_the_remote_builds_and_records_them_as_interrupted(
    make_world: MakeWorld,
) -> None:
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2)))
    world = make_world(drvs, [machine(B1)])

    building: list[FakeSession] = []

    def until_aborted(session: FakeSession) -> None:
        building.append(session)
        if not session.aborted.wait(WAIT_S):
            raise AssertionError("the build's session was never aborted")
        raise lost(session.name, "killed")

    def ctrl_c_once_d1_builds(request: BuildRequest) -> None:
        if request.drv_path == drv_path(2):
            if not world.farm.started[drv_path(1)].wait(WAIT_S):
                raise AssertionError("d1 never started")
            raise KeyboardInterrupt

    world.store(B1).on_build[drv_path(1)] = until_aborted
    world.picker.before_deciding = ctrl_c_once_d1_builds
    run = world.run(1, 2)
    with pytest.raises(KeyboardInterrupt):
        run.execute()
    assert run.interrupted.is_set()
    assert [session.aborted.is_set() for session in building] == [True]
    assert not any(thread.is_alive() for thread in run.threads.values())
    assert all(not lease.held for lease in world.picker.leases)
    assert world.attempts(1) == [(B1, Outcome.INTERRUPTED, Phase.BUILD)]
    assert world.picker.down == {}  # the builder did nothing wrong
    assert world.farm.builds == [(drv_path(1), B1)]
    with pytest.raises(InterruptedError):
        world.sessions.take(B1)


# -- regressions (each failed before the fix in run.py it came with) ------------------------------


def test_no_machine_without_keep_going_starts_nothing_after_it(make_world: MakeWorld) -> None:
    """A derivation no machine can take fails during a hand-out pass; without --keep-going
    the rest of that pass must not start either."""
    drvs = graph_of(
        (1, make_drv(1, system="aarch64-linux")), (2, make_drv(2, [1])), (3, make_drv(3))
    )
    world = make_world(drvs, [machine(B1)])
    report = world.execute(2, 3)
    assert [f.drv_path for f in report.failed] == [drv_path(1)]
    assert world.farm.builds == []
    assert report.built == 0


def test_the_local_store_failing_as_a_source_fails_the_build(make_world: MakeWorld) -> None:
    """The local store dies while it sends a build's inputs: not a builder to mark down (it
    has no machine), so the build fails with the local store's words."""
    drvs = graph_of((1, make_drv(1)))
    world = make_world(drvs, [machine(B1), machine(B2)])
    world.here.faults["dump"] = "local: nix-store --serve exited"
    report = world.execute(1)
    assert [(f.drv_path, f.place, f.message) for f in report.failed] == [
        (drv_path(1), B1, "local: nix-store --serve exited")
    ]
    assert world.picker.down == {}
    assert world.attempts(1) == [(B1, Outcome.ERROR, Phase.UPLOAD)]


def test_a_local_build_that_breaks_gives_its_slot_back(make_world: MakeWorld) -> None:
    """d1 (kvm, here) breaks before its build: the local store's session cannot be opened.
    With --keep-going, d2 (kvm too) is ready only later (after d0, built on b1, which waits
    for d1's failure) and must still be built here: the local slot was given back."""
    drvs = graph_of(
        (0, make_drv(0)), (1, make_drv(1, features="kvm")), (2, make_drv(2, [0], features="kvm"))
    )
    local = LocalCapabilities(system=SYSTEM, system_features=frozenset({"kvm"}), max_jobs=1)
    world = make_world(drvs, [machine(B1)], local=local)
    world.store(B1).add([info_of(StorePath.parse(src_path(0)))])  # d0 needs nothing from here
    world.here.hiccups["connect"] = "nix-store --serve: cannot start"  # so d1 meets this
    world.store(B1).on_build[drv_path(0)] = lambda _: world.console.wait_for("failed", 1)
    report = world.execute(1, 2, keep_going=True, local_jobs=1)
    assert [(f.drv_path, f.message) for f in report.failed] == [
        (drv_path(1), "TransportError: nix-store --serve: cannot start")
    ]
    assert report.built == 2
    assert world.nix_calls.read_text() == f"--realise {drv_path(2)} --builders  --max-jobs 1\n"


def test_builds_only_this_host_can_do_wait_for_its_slot(make_world: MakeWorld) -> None:
    """Two derivations need kvm, which only this host has, and -j 1: the second waits for the
    local slot (Nix builds what the hook declines once it has one), it does not fail."""
    drvs = graph_of((1, make_drv(1, features="kvm")), (2, make_drv(2, features="kvm")))
    local = LocalCapabilities(system=SYSTEM, system_features=frozenset({"kvm"}), max_jobs=1)
    world = make_world(drvs, [machine(B1)], local=local)
    report = world.execute(1, 2, local_jobs=1)
    assert not report.failed
    assert report.built == 2
    assert len(world.nix_calls.read_text().splitlines()) == 2


def test_a_lost_source_of_a_local_build_is_marked_down_and_the_build_retried(
    make_world: MakeWorld,
) -> None:
    """As for a build on a builder: d1's output, relayed from b1 for d2's build here, is lost
    with b1; b1 is down, d1 is built again on b2, then d2 here."""
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2, [1], features="kvm")))
    local = LocalCapabilities(system=SYSTEM, system_features=frozenset({"kvm"}), max_jobs=1)
    world = make_world(drvs, [machine(B1), machine(B2)], local=local)
    world.store(B1).faults["dump"] = "b1: broken pipe"
    report = world.execute(2, local_jobs=1)
    assert not report.failed
    assert report.built == 2
    assert world.picker.down == {B1: "b1: broken pipe"}
    assert world.farm.built_on(1) == [B1, B2]
    assert world.nix_calls.read_text() == f"--realise {drv_path(2)} --builders  --max-jobs 1\n"


def test_a_failed_local_build_gives_its_session_back(make_world: MakeWorld) -> None:
    """nix-store --realise fails: the build fails with Nix's words, and the session with the
    local store is given back (it was left taken: a nix-store --serve open to the end)."""
    drvs = graph_of((1, make_drv(1)))
    local = LocalCapabilities(system=SYSTEM, max_jobs=1)
    world = make_world(drvs, [], local=local)
    world.environ["FAKE_NIX_FAILS"] = drv_path(1)
    report = world.execute(1, local_jobs=1)
    assert [(f.drv_path, f.place, f.message) for f in report.failed] == [
        (drv_path(1), HERE, f"error: builder for '{drv_path(1)}' failed with exit code 1")
    ]
    assert _failed_status(report) == EXIT_BUILD_FAILED


def test_outputs_lost_with_a_builder_given_up_on_are_built_again(make_world: MakeWorld) -> None:
    """With --keep-going and max-attempts 1, d3's only attempt loses b1: d3 fails, and d1's
    output, which only b1 had, is built again for d2 (which waited for b2's one slot behind
    d4) instead of d2 failing for an input valid nowhere."""
    drvs = graph_of((1, make_drv(1)), (2, make_drv(2, [1])), (3, make_drv(3)), (4, make_drv(4)))
    world = make_world(drvs, [machine(B1, max_jobs=2), machine(B2)], max_attempts=1)
    world.picker.pins = {drv_path(1): B1, drv_path(3): B1, drv_path(2): B2, drv_path(4): B2}

    def lose_b1(session: FakeSession) -> None:
        world.console.wait_for("built", 1)
        session.store.lose("b1 was switched off")

    world.store(B1).on_build[drv_path(3)] = lose_b1
    world.store(B2).on_build[drv_path(4)] = lambda _: world.console.wait_for("failed", 3)
    report = world.execute(2, 3, 4, keep_going=True)
    assert [(f.drv_path, f.place) for f in report.failed] == [(drv_path(3), B1)]
    assert world.farm.built_on(1) == [B1, B2]
    assert world.farm.built_on(2) == [B2]
    assert report.built == 3
