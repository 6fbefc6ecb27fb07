"""The build graph of `nixdist build`: what is built, in which order, and what a failure costs."""

from __future__ import annotations

import math

import pytest

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
