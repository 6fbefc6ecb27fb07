"""The build graph of `nixdist build`: what is built, in which order, and what a failure costs."""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import LocalProtocolError, ParseError
from nixdist.model.derivation import Derivation, DerivationOutput
from nixdist.model.request import BuildRequest
from nixdist.scheduler.graph import (
    DEFAULT_ESTIMATE,
    BuildGraph,
    BuildInputs,
    GraphCounts,
    GraphError,
    NodeStatus,
    Root,
    plan,
)

SYSTEM = "x86_64-linux"


def drv_path(n: int) -> str:
    return f"/nix/store/{n:032d}-d{n}.drv"


def out_path(n: int, name: str = "out") -> str:
    return f"/nix/store/{n:032d}-d{n}" + ("" if name == "out" else f"-{name}")


def make_drv(
    n: int,
    inputs: dict[int, tuple[str, ...]] | None = None,
    *,
    outputs: tuple[str, ...] = ("out",),
    deferred: frozenset[str] = frozenset(),
    env: dict[str, str] | None = None,
    srcs: tuple[str, ...] = (),
) -> Derivation:
    return Derivation(
        outputs={
            name: DerivationOutput(path="" if name in deferred else out_path(n, name))
            for name in outputs
        },
        input_drvs={drv_path(i): names for i, names in sorted((inputs or {}).items())},
        input_srcs=srcs,
        platform=SYSTEM,
        builder="/bin/sh",
        args=("-c", "true"),
        env=env or {},
    )


def chain_of(*links: tuple[int, dict[int, tuple[str, ...]]]) -> dict[str, Derivation]:
    return {drv_path(n): make_drv(n, inputs) for n, inputs in links}


def drain(graph: BuildGraph) -> list[str]:
    """Build everything, one at a time, always the first ready one."""
    order = []
    while ready := graph.ready():
        graph.start(ready[0])
        graph.finish(ready[0])
        order.append(ready[0])
    assert graph.done()
    return order


# What is built.


def test_a_chain_is_built_inputs_first() -> None:
    drvs = chain_of((1, {}), (2, {1: ("out",)}), (3, {2: ("out",)}))
    graph = plan(drvs, [(drv_path(3), None)])
    assert graph.nodes() == (drv_path(1), drv_path(2), drv_path(3))
    assert graph.ready() == (drv_path(1),)
    assert drain(graph) == [drv_path(1), drv_path(2), drv_path(3)]
    assert graph.counts() == GraphCounts(
        waiting=0, ready=0, running=0, built=3, failed=0, cannot_build=0
    )


def test_a_valid_input_is_not_built_and_its_inputs_are_not_walked() -> None:
    # d1 is not even among the derivations read: d2's output is valid, so nothing needs it.
    drvs = chain_of((2, {1: ("out",)}), (3, {2: ("out",)}))
    graph = plan(drvs, [(drv_path(3), None)], valid={out_path(2)})
    assert graph.nodes() == (drv_path(3),)
    assert graph.inputs_of(drv_path(3)) == BuildInputs(outputs=((drv_path(2), "out"),), srcs=())


def test_only_the_needed_outputs_decide() -> None:
    drvs = {
        drv_path(1): make_drv(1, outputs=("dev", "out")),
        drv_path(2): make_drv(2, {1: ("dev",)}),
    }
    # d2 needs d1's dev, which is valid; d1's out is not, but nobody needs it.
    graph = plan(drvs, [(drv_path(2), None)], valid={out_path(1, "dev")})
    assert graph.nodes() == (drv_path(2),)
    # Asking for d1's out as well builds d1, and then it needs both outputs.
    graph = plan(drvs, [(drv_path(2), None), (drv_path(1), ("out",))], valid={out_path(1, "dev")})
    assert graph.nodes() == (drv_path(1), drv_path(2))
    assert graph.needed_outputs(drv_path(1)) == {"dev", "out"}
    assert graph.needed_outputs(drv_path(2)) == {"out"}


def test_roots_ask_for_all_outputs_or_some() -> None:
    drvs = {drv_path(1): make_drv(1, outputs=("dev", "out"))}
    assert plan(drvs, [(drv_path(1), None)]).needed_outputs(drv_path(1)) == {"dev", "out"}
    assert plan(drvs, [(drv_path(1), ["dev"])]).needed_outputs(drv_path(1)) == {"dev"}
    assert len(plan(drvs, [(drv_path(1), ())])) == 0
    everything_valid = plan(drvs, [(drv_path(1), None)], valid={out_path(1), out_path(1, "dev")})
    assert everything_valid.done()
    assert everything_valid.ready() == ()
    assert everything_valid.remaining_critical_path() == 0.0


def test_an_output_without_a_path_is_never_valid() -> None:
    drvs = {drv_path(1): make_drv(1, deferred=frozenset({"out"}))}
    assert plan(drvs, [(drv_path(1), None)], valid={""}).nodes() == (drv_path(1),)


def test_a_cycle_is_an_error_that_names_it() -> None:
    drvs = chain_of((1, {3: ("out",)}), (2, {1: ("out",)}), (3, {2: ("out",)}), (4, {3: ("out",)}))
    with pytest.raises(GraphError, match="dependency cycle") as caught:
        plan(drvs, [(drv_path(4), None)])
    assert isinstance(caught.value, ParseError)
    cycle = f"{drv_path(1)} needs {drv_path(3)} needs {drv_path(2)} needs {drv_path(1)}"
    assert str(caught.value) == f"dependency cycle: {cycle}"


def test_a_derivation_that_needs_itself_is_a_cycle() -> None:
    with pytest.raises(GraphError, match=f"{drv_path(1)} needs {drv_path(1)}$"):
        plan(chain_of((1, {1: ("out",)})), [(drv_path(1), None)])


def test_a_cycle_below_a_valid_output_is_never_seen() -> None:
    drvs = chain_of((1, {2: ("out",)}), (2, {1: ("out",)}), (3, {2: ("out",)}))
    assert plan(drvs, [(drv_path(3), None)], valid={out_path(2)}).nodes() == (drv_path(3),)


def test_a_missing_derivation_is_named_with_what_needs_it() -> None:
    with pytest.raises(GraphError, match=rf"{drv_path(1)} \(an input of {drv_path(2)}\) is not"):
        plan(chain_of((2, {1: ("out",)})), [(drv_path(2), None)])
    with pytest.raises(GraphError, match=rf"{drv_path(5)} \(asked for\) is not"):
        plan({}, [(drv_path(5), None)])


def test_an_unknown_output_is_named() -> None:
    drvs = chain_of((1, {}), (2, {1: ("lib",)}))
    with pytest.raises(GraphError, match=rf"{drv_path(1)} has no output 'lib' \(an input of"):
        plan(drvs, [(drv_path(2), None)])
    with pytest.raises(GraphError, match=r"has no output 'bin' \(asked for\)"):
        plan(drvs, [(drv_path(1), ["bin"])])


# What the scheduler and the builder are told.


def test_request_carries_system_and_features() -> None:
    drv = make_drv(
        1, deferred=frozenset({"out"}), env={"requiredSystemFeatures": "kvm big-parallel"}
    )
    graph = plan({drv_path(1): drv}, [(drv_path(1), None)])
    assert graph.request(drv_path(1), am_willing=True) == BuildRequest(
        drv_path=drv_path(1),
        system=SYSTEM,
        required_features=frozenset({"kvm", "big-parallel", "ca-derivations"}),
        am_willing=True,
    )


def test_inputs_are_every_input_output_and_source() -> None:
    drvs = {
        drv_path(1): make_drv(1, outputs=("dev", "out")),
        drv_path(2): make_drv(2),
        drv_path(3): make_drv(
            3, {1: ("dev", "out"), 2: ("out",)}, srcs=("/nix/store/b-src", "/nix/store/a-src")
        ),
    }
    graph = plan(drvs, [(drv_path(3), None)], valid={out_path(2)})
    assert graph.inputs_of(drv_path(3)) == BuildInputs(
        outputs=((drv_path(1), "dev"), (drv_path(1), "out"), (drv_path(2), "out")),
        srcs=("/nix/store/a-src", "/nix/store/b-src"),
    )


def test_estimates_default_when_unknown_or_absurd() -> None:
    drvs = chain_of((1, {}), (2, {}), (3, {}), (4, {}))
    given_ = {drv_path(1): 7.5, drv_path(2): -1.0, drv_path(3): math.nan}
    graph = plan(drvs, [(drv_path(n), None) for n in (1, 2, 3, 4)], estimate=given_.get)
    assert [graph.estimate(drv_path(n)) for n in (1, 2, 3, 4)] == [7.5, 1.0, 1.0, 1.0]
    assert plan(drvs, [(drv_path(1), None)]).estimate(drv_path(1)) == DEFAULT_ESTIMATE


# Order.


def diamond(seconds: dict[str, float]) -> BuildGraph:
    """d5 needs d3 and d4; d3 needs d1; d4 needs d1 and d2."""
    drvs = chain_of(
        (1, {}), (2, {}), (3, {1: ("out",)}), (4, {1: ("out",), 2: ("out",)}),
        (5, {3: ("out",), 4: ("out",)}),
    )  # fmt: skip
    return plan(drvs, [(drv_path(5), None)], estimate=seconds.get)


def test_ready_is_ordered_by_critical_path() -> None:
    graph = diamond({drv_path(1): 1, drv_path(2): 5, drv_path(3): 1, drv_path(4): 1})
    # d1: 1 + max(d3: 1 + 1, d4: 1 + 1) = 3; d2: 5 + d4 = 7.
    assert graph.ready() == (drv_path(2), drv_path(1))
    assert [graph.critical_path(drv_path(n)) for n in (1, 2, 3, 4, 5)] == [3, 7, 2, 2, 1]
    assert graph.remaining_critical_path() == 7
    assert graph.lower_bound(1) == 9  # the work
    assert graph.lower_bound(2) == 7  # the critical path


def test_ties_go_to_more_dependents_then_to_the_path() -> None:
    graph = diamond({drv_path(1): 2, drv_path(2): 2})
    # Both have a critical path of 4; d1 is needed by d3 and d4, d2 only by d4.
    assert graph.ready() == (drv_path(1), drv_path(2))
    graph = diamond({})
    assert [graph.critical_path(drv_path(n)) for n in (1, 2)] == [3, 3]
    assert graph.ready() == (drv_path(1), drv_path(2))
    drvs = chain_of((1, {}), (2, {}))
    assert plan(drvs, [(drv_path(2), None), (drv_path(1), None)]).ready() == (
        drv_path(1),
        drv_path(2),
    )


def test_remaining_critical_path_counts_running_builds_in_full() -> None:
    graph = diamond({drv_path(1): 1, drv_path(2): 5, drv_path(3): 1, drv_path(4): 1})
    graph.start(drv_path(2))
    assert graph.remaining_critical_path() == 7
    graph.start(drv_path(1))
    graph.finish(drv_path(1))
    assert graph.ready() == (drv_path(3),)
    assert graph.remaining_critical_path() == 7
    graph.finish(drv_path(2))
    assert graph.ready() == (drv_path(3), drv_path(4))
    assert graph.remaining_critical_path() == 2
    assert graph.lower_bound(2) == 7  # the plan's, however far the run has got


# Moves.


def test_moves_the_state_does_not_allow_are_refused() -> None:
    graph = diamond({})
    with pytest.raises(LocalProtocolError, match="is ready: it cannot become built"):
        graph.finish(drv_path(1))
    with pytest.raises(LocalProtocolError, match="is waiting: it cannot become running"):
        graph.start(drv_path(3))
    graph.start(drv_path(1))
    with pytest.raises(LocalProtocolError, match="is running: it cannot become running"):
        graph.start(drv_path(1))
    with pytest.raises(KeyError):
        graph.start(drv_path(9))
    with pytest.raises(ValueError, match="capacity"):
        graph.lower_bound(0)


def test_a_failure_cuts_off_its_dependents_and_the_rest_goes_on() -> None:
    graph = diamond({drv_path(2): 5})
    graph.start(drv_path(2))
    assert graph.fail(drv_path(2)) == (drv_path(4), drv_path(5))
    assert graph.status(drv_path(4)) is NodeStatus.CANNOT_BUILD
    # d1's chain through d4 is gone: what is left of it runs through d3.
    assert graph.critical_path(drv_path(1)) == 2
    assert graph.remaining_critical_path() == 2
    assert drain(graph) == [drv_path(1), drv_path(3)]
    assert graph.counts() == GraphCounts(
        waiting=0, ready=0, running=0, built=2, failed=1, cannot_build=2
    )
    assert repr(graph) == (
        "<BuildGraph [5 derivations: 0 waiting, 0 ready, 0 running, 2 built, 1 failed,"
        " 2 cannot build]>"
    )


def test_a_failure_reranks_what_is_ready() -> None:
    drvs = chain_of((1, {}), (2, {}), (3, {1: ("out",), 2: ("out",)}), (4, {}))
    seconds: dict[str, float] = {drv_path(1): 3, drv_path(2): 1, drv_path(3): 5, drv_path(4): 4}
    graph = plan(drvs, [(drv_path(3), None), (drv_path(4), None)], estimate=seconds.get)
    # d1: 3 + 5 leads d2: 1 + 5, and both lead d4: 4 ...
    assert graph.ready() == (drv_path(1), drv_path(2), drv_path(4))
    # ... until d2 fails: d3 will never be built, so d1's chain is d1 alone.
    assert graph.fail(drv_path(2)) == (drv_path(3),)
    assert graph.critical_path(drv_path(1)) == 3
    assert graph.ready() == (drv_path(4), drv_path(1))
    assert graph.remaining_critical_path() == 4


def test_a_ready_derivation_can_fail_without_being_started() -> None:
    graph = diamond({})
    assert graph.fail(drv_path(1)) == (drv_path(3), drv_path(4), drv_path(5))
    assert graph.fail(drv_path(2)) == ()  # d4 was already cut off
    assert graph.done()


# Size.


def test_ten_thousand_derivations_deep_are_drained() -> None:
    n = 10_000
    drvs = {drv_path(0): make_drv(0)}
    for i in range(1, n):
        drvs[drv_path(i)] = make_drv(i, {i - 1: ("out",), i // 2: ("out",)})
    graph = plan(drvs, [(drv_path(n - 1), None)])
    assert graph.critical_path(drv_path(0)) == n
    assert graph.lower_bound(4) == n
    assert drain(graph) == [drv_path(i) for i in range(n)]


def test_ten_thousand_derivations_wide_are_drained() -> None:
    n = 10_000
    drvs = {drv_path(i): make_drv(i) for i in range(n)}
    drvs[drv_path(n)] = make_drv(n, dict.fromkeys(range(n), ("out",)))
    graph = plan(drvs, [(drv_path(n), None)])
    assert graph.lower_bound(10) == (n + 1) / 10  # the work
    assert graph.lower_bound(n) == 2  # the critical path
    started = 0
    while ready := graph.ready():
        for path in ready:
            graph.start(path)
        for path in ready:
            graph.finish(path)
        started += len(ready)
    assert started == n + 1
    assert graph.done()


# Properties, on random closures checked against a naive model of the same rules.

OUTPUT_NAMES = ("dev", "lib", "out")


def subsets(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The non-empty subsets of `names`, sorted: one draw picks one (faster than a set)."""
    return [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


@dataclass(frozen=True)
class Case:
    drvs: dict[str, Derivation]
    roots: list[Root]
    valid: frozenset[str]
    seconds: dict[str, float]

    def plan(self) -> BuildGraph:
        return plan(self.drvs, self.roots, valid=self.valid, estimate=self.seconds.get)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A random closure: derivation i may need outputs of any j < i, so it is acyclic."""
    n = draw(st.integers(1, 16))
    drvs: dict[str, Derivation] = {}
    outputs_of: list[tuple[str, ...]] = []
    for i in range(n):
        outputs = draw(st.sampled_from(subsets(OUTPUT_NAMES)))
        deferred = draw(st.sets(st.sampled_from(outputs), max_size=1)) if i % 4 == 3 else set()
        picked: set[int] = set()
        if i:  # two in three need something: deep graphs, and a few more leaves
            picked = draw(st.sets(st.integers(0, i - 1), min_size=int(i % 3 > 0), max_size=3))
        inputs = {j: draw(st.sampled_from(subsets(outputs_of[j]))) for j in sorted(picked)}
        drvs[drv_path(i)] = make_drv(i, inputs, outputs=outputs, deferred=frozenset(deferred))
        outputs_of.append(outputs)
    paths = sorted(o.path for d in drvs.values() for o in d.outputs.values() if o.path)
    roots: list[Root] = [
        (drv_path(r), draw(st.none() | st.sampled_from(subsets(outputs_of[r]))))
        for r in sorted({n - 1} | draw(st.sets(st.integers(0, n - 1), max_size=2)))
    ]
    return Case(
        drvs=drvs,
        roots=roots,
        valid=frozenset(draw(st.sets(st.sampled_from(paths)))),
        seconds={p: float(draw(st.integers(0, 3))) for p in drvs},
    )


def expected_needs(case: Case) -> dict[str, set[str]]:
    """The derivations to build and their needed outputs, as the least fixed point of the rule
    "built iff a needed output is not valid", iterated naively from nothing built."""
    built: set[str] = set()
    while True:
        needed: dict[str, set[str]] = {}
        for path, outputs in case.roots:
            needed.setdefault(path, set()).update(outputs or case.drvs[path].outputs)
        for path in built:
            for input_path, outputs in case.drvs[path].input_drvs.items():
                needed.setdefault(input_path, set()).update(outputs)
        now = {path for path, outputs in needed.items() if any(missing(case, path, outputs))}
        if now == built:
            return {path: needed[path] for path in built}
        built = now


def missing(case: Case, path: str, outputs: set[str]) -> list[bool]:
    paths = [case.drvs[path].outputs[name].path for name in outputs]
    return [not p or p not in case.valid for p in paths]


def dependents_in(planned: set[str], case: Case) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {path: set() for path in planned}
    for path in planned:
        for input_path in case.drvs[path].input_drvs:
            if input_path in planned:
                found[input_path].add(path)
    return found


def transitive(dependents: dict[str, set[str]], path: str) -> set[str]:
    found: set[str] = set()
    todo = list(dependents[path])
    while todo:
        if (next_ := todo.pop()) not in found:
            found.add(next_)
            todo.extend(dependents[next_])
    return found


def critical_paths(case: Case, dependents: dict[str, set[str]], live: set[str]) -> dict[str, float]:
    paths: dict[str, float] = {}

    def of(path: str) -> float:
        if path not in paths:
            above = [of(d) for d in dependents[path] if d in live]
            paths[path] = case.seconds[path] + max(above, default=0.0)
        return paths[path]

    return {path: of(path) for path in live}


@given(cases())
def test_plan_builds_exactly_what_the_rule_says(case: Case) -> None:
    graph = case.plan()
    expected = expected_needs(case)
    assert set(graph.nodes()) == set(expected)
    for path in graph.nodes():
        assert graph.needed_outputs(path) == expected[path]
    place = {path: k for k, path in enumerate(graph.nodes())}
    for path in graph.nodes():
        assert all(place[i] < place[path] for i in case.drvs[path].input_drvs if i in place)


def run(case: Case, data: st.DataObject, *, may_fail: bool) -> None:
    """Drive a plan to the end with moves drawn at random, checking every step against the
    naive model: what is ready, its order, critical paths and what each failure cuts off."""
    graph = case.plan()
    planned = set(expected_needs(case))
    dependents = dependents_in(planned, case)
    started: list[str] = []
    built: set[str] = set()
    failed: set[str] = set()
    lost: set[str] = set()
    running: set[str] = set()
    while not graph.done():
        live = planned - built - failed - lost
        paths = critical_paths(case, dependents, live)
        check_ready(case, graph, live - running, built)
        ranks = {p: (-paths[p], -len(dependents[p] & live), p) for p in live}
        assert graph.ready() == tuple(sorted(graph.ready(), key=ranks.__getitem__))
        assert [graph.critical_path(p) for p in live] == [paths[p] for p in live]
        assert graph.remaining_critical_path() == max(paths.values())
        moves = [("start", p) for p in graph.ready()] + [("finish", p) for p in sorted(running)]
        if may_fail:
            moves += [("fail", p) for p in [*graph.ready(), *sorted(running)]]
        move, path = data.draw(st.sampled_from(moves))
        if move == "start":
            graph.start(path)
            started.append(path)
            running.add(path)
        elif move == "finish":
            graph.finish(path)
            running.discard(path)
            built.add(path)
        else:
            assert set(graph.fail(path)) == transitive(dependents, path) - lost
            running.discard(path)
            failed.add(path)
            lost |= transitive(dependents, path)
    assert len(started) == len(set(started))
    assert built == planned - failed - lost
    assert graph.remaining_critical_path() == 0.0
    for path in planned:
        status = graph.status(path)
        assert (status is NodeStatus.BUILT) == (path in built)
        assert (status is NodeStatus.FAILED) == (path in failed)
        assert (status is NodeStatus.CANNOT_BUILD) == (path in lost)


def check_ready(case: Case, graph: BuildGraph, not_started: set[str], built: set[str]) -> None:
    """Ready: not started, every planned input built; the first has the longest chain."""
    ready = graph.ready()
    assert set(ready) == {
        path
        for path in not_started
        if all(i in built for i in case.drvs[path].input_drvs if i in graph)
    }
    if ready:
        assert graph.critical_path(ready[0]) == max(graph.critical_path(p) for p in ready)


@given(cases(), st.data())
def test_any_drain_builds_each_once_after_its_inputs_longest_chain_first(
    case: Case, data: st.DataObject
) -> None:
    run(case, data, may_fail=False)


@given(cases(), st.data())
def test_failures_cut_off_exactly_their_dependents_and_the_rest_is_built(
    case: Case, data: st.DataObject
) -> None:
    run(case, data, may_fail=True)


@given(cases(), st.integers(1, 4), st.data())
def test_lower_bound_is_below_any_list_schedule(
    case: Case, capacity: int, data: st.DataObject
) -> None:
    graph = case.plan()
    planned = set(expected_needs(case))
    work = sum(case.seconds[path] for path in planned)
    longest = max(critical_paths(case, dependents_in(planned, case), planned).values(), default=0)
    assert graph.lower_bound(capacity) == max(longest, work / capacity)
    now = 0.0
    running: list[tuple[float, str]] = []
    while not graph.done():
        while len(running) < capacity and (ready := graph.ready()):
            path = data.draw(st.sampled_from(ready))  # any ready one: any list schedule
            graph.start(path)
            heapq.heappush(running, (now + graph.estimate(path), path))
        now, path = heapq.heappop(running)
        graph.finish(path)
    assert graph.lower_bound(capacity) <= now
    assert now <= work / capacity + longest + 1e-9  # Graham's bound for list schedules
