"""The build graph of one ``nixdist build`` run: what must be built, and in which order.

Nothing here does I/O or reads a clock. `plan` takes the ``.drv`` closure as read
(drv path → `Derivation`), the roots the user asked for (a drv path with output names, or
``None`` for all of them), the output paths that are already valid (where is the caller's
call: locally, or on builders that substitute), and an estimate of each build's duration in
seconds (from history). It returns a `BuildGraph`, which the caller drives through
`ready` / `start` / `finish` / `fail` as builds are handed out and come back (issue 14, item 2).

What is built
-------------
An output is *needed* when a root asks for it, or when a derivation that is built lists it in
its ``inputDrvs``. A derivation is *built* when one of its needed outputs is not valid; an
output whose path is not known in advance (floating or deferred content-addressed) never
counts as valid. A derivation whose needed outputs are all valid is not built, and nothing is
needed from its inputs on its account: the walk stops there, and its inputs need not even have
been read. Needs only grow, and what a built derivation needs from its inputs does not depend on
which of its own outputs are needed, so one worklist pass decides every derivation: linear in
the part of the closure it walks. Edges between built derivations must be acyclic (Nix cannot
write a cycle, but the input is read from disk): a cycle, a missing ``.drv`` or an output a
derivation does not have is a `GraphError` that names the derivations.

States
------
Every planned derivation is in one `NodeStatus`::

    waiting ──(its last planned input is built)──▶ ready ──start──▶ running ──finish──▶ built
                                                     │                 │
                                                     └──────fail───────┴──▶ failed
    waiting ──(an input fails, directly or through others)──▶ cannot-build

`fail` returns the derivations that can now never be built (the failed one's transitive
dependents) so that with ``--keep-going`` the independent rest goes on. The run is `done` when
nothing is waiting, ready or running. Inputs that were valid from the start are not in the
graph: they never hold anything back.

Order
-----
`ready` lists the ready derivations by *critical path*: the longest chain of estimates from the
derivation up to a root through derivations still to be built, itself included (Hu's
highest-level-first list scheduling). Ties go to the derivation with more dependents still to be
built (it unblocks more), then to the lower drv path, so one plan is always run the same way.
Critical paths count only derivations that may still be built: a failure cuts the chains through
its dependents, and the derivations below them (their live inputs, transitively) are ranked anew.
A running derivation counts its whole estimate: how long it has been running is the caller's
clock, not ours, so `remaining_critical_path` is the longest chain still ahead if every running
build had just started. Since a waiting derivation always has a live input whose chain runs
through it, that longest chain starts at a ready or running derivation.

Bounds
------
`lower_bound(capacity)` is ``max(critical path, total work / capacity)`` of the whole plan as
made: no schedule on `capacity` equal slots can finish sooner (issue 14's W3 goal: a makespan
within 1.1 times this). A list schedule (never a slot idle while something is ready) finishes
by ``work / capacity + critical path`` (Graham, 1969), which the tests check too.

Costs, for V planned derivations, E edges between them and R ready ones: `plan` O(V log V + E);
`start` and a `finish` that readies k dependents O((1 + k) · log R) comparisons plus moving the
ready list (a memmove); `ready` O(R) (a copy of a list kept sorted); `fail` linear in the
dependents it cuts off and the inputs it re-ranks, plus sorting those inputs;
`remaining_critical_path` O(running).
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, TypeAlias

from nixdist.errors import LocalProtocolError, ParseError
from nixdist.model.derivation import required_system_features
from nixdist.model.request import BuildRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Container, Iterable, Mapping

    from nixdist.model.derivation import Derivation

DEFAULT_ESTIMATE: Final = 1.0
"""Seconds assumed for a build that history knows nothing about."""

Root: TypeAlias = "tuple[str, Collection[str] | None]"
"""What the user asked for: a drv path and output names, or None for all its outputs."""

Estimate: TypeAlias = "Callable[[str], float | None]"
"""Expected seconds to build a drv path; None (or a negative or non-finite number): unknown."""

_Key: TypeAlias = tuple[float, int, str]  # (-critical path, -live dependents, drv path)
_PATH_OF_KEY = operator.itemgetter(2)


class GraphError(ParseError):
    """The derivations read cannot be planned: a cycle, a missing ``.drv``, an unknown output."""


class NodeStatus(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"
    CANNOT_BUILD = "cannot-build"


_LIVE: Final = frozenset({NodeStatus.WAITING, NodeStatus.READY, NodeStatus.RUNNING})


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphCounts:
    """How many planned derivations are in each state."""

    waiting: int
    ready: int
    running: int
    built: int
    failed: int
    cannot_build: int

    @property
    def pending(self) -> int:
        """Not started yet, and still possible: waiting or ready."""
        return self.waiting + self.ready

    @property
    def total(self) -> int:
        return self.pending + self.running + self.built + self.failed + self.cannot_build


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildInputs:
    """What a builder must hold before it builds a derivation: its direct inputs.

    `outputs` are (input drv path, output name) pairs, sorted; an output's store path may be
    known only once it is built (content-addressed), so the caller resolves them. The caller
    adds the runtime closure of every path (their references), which this layer cannot know.
    """

    outputs: tuple[tuple[str, str], ...]
    srcs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Node:
    """What a plan fixes about one derivation it builds."""

    drv: Derivation
    needed: frozenset[str]
    inputs: tuple[str, ...]  # the planned derivations among its inputDrvs, sorted
    dependents: tuple[str, ...]  # the planned derivations that list it in inputDrvs, sorted
    estimate: float
    order: int  # its place in a topological order (inputs first)


def plan(
    drvs: Mapping[str, Derivation],
    roots: Iterable[Root],
    *,
    valid: Container[str] = frozenset(),
    estimate: Estimate | None = None,
) -> BuildGraph:
    """The graph of what must be built to get `roots`, given the output paths in `valid`."""
    needed = _needed_outputs(drvs, roots, valid)
    inputs = {p: tuple(sorted(i for i in drvs[p].input_drvs if i in needed)) for p in needed}
    dependents: dict[str, list[str]] = {p: [] for p in needed}
    for path in sorted(needed):
        for input_path in inputs[path]:
            dependents[input_path].append(path)
    order = _topological_order(inputs, dependents)
    return BuildGraph(
        {
            path: _Node(
                drv=drvs[path],
                needed=needed[path],
                inputs=inputs[path],
                dependents=tuple(dependents[path]),
                estimate=_estimate(estimate, path),
                order=place,
            )
            for place, path in enumerate(order)
        }
    )


def _needed_outputs(
    drvs: Mapping[str, Derivation], roots: Iterable[Root], valid: Container[str]
) -> dict[str, frozenset[str]]:
    """The derivations to build, each with its needed output names (one worklist pass)."""
    needed: dict[str, set[str]] = {}
    to_build: dict[str, None] = {}  # an ordered set
    queue: deque[str] = deque()

    def need(path: str, outputs: Iterable[str] | None, wanted_by: str | None) -> None:
        drv = drvs.get(path)
        if drv is None:
            raise GraphError(f"{path}{_wanted_by(wanted_by)} is not among the derivations read")
        names = needed.setdefault(path, set())
        for name in drv.outputs if outputs is None else outputs:
            output = drv.outputs.get(name)
            if output is None:
                raise GraphError(f"{path} has no output {name!r}{_wanted_by(wanted_by)}")
            names.add(name)
            if path not in to_build and not (output.path and output.path in valid):
                to_build[path] = None
                queue.append(path)

    for path, outputs in roots:
        need(path, outputs, None)
    while queue:
        path = queue.popleft()
        for input_path, outputs in drvs[path].input_drvs.items():
            need(input_path, outputs, path)
    return {path: frozenset(needed[path]) for path in to_build}


def _wanted_by(dependent: str | None) -> str:
    return " (asked for)" if dependent is None else f" (an input of {dependent})"


def _topological_order(
    inputs: Mapping[str, tuple[str, ...]], dependents: Mapping[str, list[str]]
) -> list[str]:
    """Every derivation after its inputs (Kahn's algorithm; sorted where free to choose)."""
    unmet = {path: len(ins) for path, ins in inputs.items()}
    queue = deque(sorted(path for path, count in unmet.items() if count == 0))
    order: list[str] = []
    while queue:
        path = queue.popleft()
        order.append(path)
        for dependent in dependents[path]:
            unmet[dependent] -= 1
            if unmet[dependent] == 0:
                queue.append(dependent)
    if len(order) < len(inputs):
        raise GraphError(f"dependency cycle: {_a_cycle(inputs, unmet)}")
    return order


def _a_cycle(inputs: Mapping[str, tuple[str, ...]], unmet: Mapping[str, int]) -> str:
    """One cycle among the derivations Kahn's algorithm could not place, as text.

    Each of them has an input that could not be placed either, so following those inputs from
    any of them must come back to a derivation already seen: that one is on a cycle.
    """
    seen: dict[str, int] = {}
    walk: list[str] = []
    path = min(p for p, count in unmet.items() if count > 0)
    while path not in seen:
        seen[path] = len(walk)
        walk.append(path)
        path = next(i for i in inputs[path] if unmet[i] > 0)
    cycle = [*walk[seen[path] :], path]
    return " needs ".join(cycle)


def _estimate(estimate: Estimate | None, path: str) -> float:
    seconds = None if estimate is None else estimate(path)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return DEFAULT_ESTIMATE
    return float(seconds)


class BuildGraph:
    """The derivations one run builds and how far it has got: the run's mutable state.

    Made by `plan`. Every answer is deterministic: the same plan driven by the same calls
    gives the same answers. A drv path that is not in the plan is a `KeyError`; a move the
    state does not allow (finishing a build that was not started) is a `LocalProtocolError`.
    """

    def __init__(self, nodes: Mapping[str, _Node]) -> None:
        """`nodes` in topological order, inputs first (as `plan` makes them)."""
        self._nodes = nodes
        self._status = dict.fromkeys(nodes, NodeStatus.WAITING)
        self._unmet = {path: len(node.inputs) for path, node in nodes.items()}
        self._counts = dict.fromkeys(NodeStatus, 0)
        self._counts[NodeStatus.WAITING] = len(nodes)
        self._path: dict[str, float] = {}
        self._key: dict[str, _Key] = {}
        self._ready: list[_Key] = []  # sorted: the first is the one to start first
        self._running: set[str] = set()
        self._rank(reversed(list(nodes)))
        self._plan_path = max(self._path.values(), default=0.0)
        self._work = math.fsum(node.estimate for node in nodes.values())
        for path, unmet in self._unmet.items():
            if unmet == 0:
                self._set(path, NodeStatus.READY)
                self._ready.append(self._key[path])
        self._ready.sort()

    def __repr__(self) -> str:
        c = self.counts()
        return (
            f"<BuildGraph [{c.total} derivations: {c.waiting} waiting, {c.ready} ready,"
            f" {c.running} running, {c.built} built, {c.failed} failed,"
            f" {c.cannot_build} cannot build]>"
        )

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, drv_path: object) -> bool:
        return drv_path in self._nodes

    # What is planned.

    def nodes(self) -> tuple[str, ...]:
        """Every planned derivation, each after its planned inputs."""
        return tuple(self._nodes)

    def needed_outputs(self, drv_path: str) -> frozenset[str]:
        """The outputs of `drv_path` that a root or a planned dependent needs."""
        return self._nodes[drv_path].needed

    def dependents(self, drv_path: str) -> tuple[str, ...]:
        """The planned derivations that need `drv_path`'s outputs."""
        return self._nodes[drv_path].dependents

    def estimate(self, drv_path: str) -> float:
        return self._nodes[drv_path].estimate

    def inputs_of(self, drv_path: str) -> BuildInputs:
        """What must be on the builder of `drv_path` (planned inputs once they are built)."""
        drv = self._nodes[drv_path].drv
        outputs = sorted((i, name) for i, names in drv.input_drvs.items() for name in names)
        return BuildInputs(outputs=tuple(outputs), srcs=tuple(sorted(drv.input_srcs)))

    def request(self, drv_path: str, *, am_willing: bool) -> BuildRequest:
        """The question `nixdist.scheduler.policy.choose` answers for `drv_path`."""
        drv = self._nodes[drv_path].drv
        return BuildRequest(
            drv_path=drv_path,
            system=drv.platform,
            required_features=required_system_features(drv),
            am_willing=am_willing,
        )

    def lower_bound(self, capacity: int) -> float:
        """No schedule of the whole plan on `capacity` equal slots takes less (seconds)."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        return max(self._plan_path, self._work / capacity)

    # How far the run has got.

    def status(self, drv_path: str) -> NodeStatus:
        return self._status[drv_path]

    def counts(self) -> GraphCounts:
        c = self._counts
        return GraphCounts(
            waiting=c[NodeStatus.WAITING],
            ready=c[NodeStatus.READY],
            running=c[NodeStatus.RUNNING],
            built=c[NodeStatus.BUILT],
            failed=c[NodeStatus.FAILED],
            cannot_build=c[NodeStatus.CANNOT_BUILD],
        )

    def done(self) -> bool:
        """Nothing is waiting, ready or running: every derivation is built or never will be."""
        c = self._counts
        return c[NodeStatus.WAITING] + c[NodeStatus.READY] + c[NodeStatus.RUNNING] == 0

    def ready(self) -> tuple[str, ...]:
        """The derivations that can start now, longest critical path first."""
        return tuple(map(_PATH_OF_KEY, self._ready))

    def critical_path(self, drv_path: str) -> float:
        """The longest chain of estimates from `drv_path` up to a root through derivations
        still to be built, itself included (for one no longer to be built: its last value)."""
        return self._path[drv_path]

    def remaining_critical_path(self) -> float:
        """The longest chain of estimates among derivations not built yet (running ones count
        their whole estimate); 0 when nothing is left."""
        first = -self._ready[0][0] if self._ready else 0.0
        return max([first, *(self._path[path] for path in self._running)])

    # Moves.

    def start(self, drv_path: str) -> None:
        """`drv_path`, which is ready, has been handed to a builder."""
        self._move(drv_path, NodeStatus.RUNNING, NodeStatus.READY)

    def finish(self, drv_path: str) -> None:
        """`drv_path`, which is running, has been built: its outputs now exist."""
        self._move(drv_path, NodeStatus.BUILT, NodeStatus.RUNNING)
        for dependent in self._nodes[drv_path].dependents:
            self._unmet[dependent] -= 1
            if self._unmet[dependent] == 0 and self._status[dependent] is NodeStatus.WAITING:
                self._set(dependent, NodeStatus.READY)
                bisect.insort(self._ready, self._key[dependent])

    def fail(self, drv_path: str) -> tuple[str, ...]:
        """`drv_path`, ready or running, cannot be built (its build failed, or nothing can
        take it). Returns the derivations that can therefore never be built (sorted), now
        cannot-build: its transitive dependents not already known to be."""
        self._move(drv_path, NodeStatus.FAILED, NodeStatus.READY, NodeStatus.RUNNING)
        lost: list[str] = []
        stack = [drv_path]
        while stack:
            for dependent in self._nodes[stack.pop()].dependents:
                if self._status[dependent] is NodeStatus.WAITING:
                    self._set(dependent, NodeStatus.CANNOT_BUILD)
                    lost.append(dependent)
                    stack.append(dependent)
        self._rerank([drv_path, *lost])
        return tuple(sorted(lost))

    def requeue(self, drv_path: str) -> None:
        """`drv_path`, which is running, is ready again: its builder was lost under it."""
        self._move(drv_path, NodeStatus.READY, NodeStatus.RUNNING)
        bisect.insort(self._ready, self._key[drv_path])

    def reopen(self, drv_path: str) -> None:
        """`drv_path`, built, must be built again: its outputs were lost with the only store
        that had them. Its dependents that have not started wait for it again (the running
        and built ones have what they needed). Reopen inputs before their dependents."""
        self._move(drv_path, NodeStatus.WAITING, NodeStatus.BUILT)
        node = self._nodes[drv_path]
        self._unmet[drv_path] = sum(
            1 for path in node.inputs if self._status[path] is not NodeStatus.BUILT
        )
        for dependent in node.dependents:
            status = self._status[dependent]
            if status is NodeStatus.READY:
                self._ready.pop(bisect.bisect_left(self._ready, self._key[dependent]))
                self._set(dependent, NodeStatus.WAITING)
            if status in {NodeStatus.READY, NodeStatus.WAITING}:
                self._unmet[dependent] += 1
        self._rank([drv_path])
        if self._unmet[drv_path] == 0:
            self._set(drv_path, NodeStatus.READY)
            bisect.insort(self._ready, self._key[drv_path])
        self._rerank([drv_path])

    # Internals.

    def _move(self, drv_path: str, to: NodeStatus, *allowed: NodeStatus) -> None:
        status = self._status[drv_path]
        if status not in allowed:
            raise LocalProtocolError(f"{drv_path} is {status}: it cannot become {to}")
        if status is NodeStatus.READY:
            self._ready.pop(bisect.bisect_left(self._ready, self._key[drv_path]))
        self._running.discard(drv_path)
        if to is NodeStatus.RUNNING:
            self._running.add(drv_path)
        self._set(drv_path, to)

    def _set(self, drv_path: str, status: NodeStatus) -> None:
        self._counts[self._status[drv_path]] -= 1
        self._counts[status] += 1
        self._status[drv_path] = status

    def _rank(self, paths: Iterable[str]) -> None:
        """Work out the critical paths of `paths`, given in an order that has every
        derivation after its dependents."""
        for path in paths:
            node = self._nodes[path]
            live = [d for d in node.dependents if self._status[d] in _LIVE]
            self._path[path] = node.estimate + max((self._path[d] for d in live), default=0.0)
            self._key[path] = (-self._path[path], -len(live), path)

    def _rerank(self, removed: Iterable[str]) -> None:
        """Rank anew the live derivations whose chains ran through `removed` ones: the live
        inputs of those, transitively."""
        affected: set[str] = set()
        stack = list(removed)
        while stack:
            for input_path in self._nodes[stack.pop()].inputs:
                if input_path not in affected and self._status[input_path] in _LIVE:
                    affected.add(input_path)
                    stack.append(input_path)
        ready = [path for path in affected if self._status[path] is NodeStatus.READY]
        for path in ready:
            self._ready.pop(bisect.bisect_left(self._ready, self._key[path]))
        self._rank(sorted(affected, key=lambda path: self._nodes[path].order, reverse=True))
        for path in ready:
            bisect.insort(self._ready, self._key[path])
