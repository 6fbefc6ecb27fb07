"""A build handed out again, and built outputs lost with their builder (nixdist build's
failover): the graph goes back exactly as far as it must."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nixdist.scheduler.graph import NodeStatus, plan
from unit.scheduler.test_graph import chain_of, drain, drv_path


def test_a_requeued_build_is_ready_again_and_runs_once_more() -> None:
    graph = plan(chain_of((1, {}), (2, {1: ("out",)})), [(drv_path(2), None)])
    graph.start(drv_path(1))
    graph.requeue(drv_path(1))
    assert graph.ready() == (drv_path(1),)
    assert drain(graph) == [drv_path(1), drv_path(2)]


def test_a_reopened_input_holds_back_its_waiting_dependents() -> None:
    drvs = chain_of((1, {}), (2, {}), (3, {1: ("out",), 2: ("out",)}))
    graph = plan(drvs, [(drv_path(3), None)])
    for n in (1, 2):
        graph.start(drv_path(n))
        graph.finish(drv_path(n))
    assert graph.ready() == (drv_path(3),)
    graph.reopen(drv_path(1))
    assert graph.status(drv_path(3)) is NodeStatus.WAITING
    assert graph.ready() == (drv_path(1),)
    assert drain(graph) == [drv_path(1), drv_path(3)]
    assert graph.counts().built == 3


def test_a_running_dependent_is_left_alone() -> None:
    graph = plan(chain_of((1, {}), (2, {1: ("out",)})), [(drv_path(2), None)])
    graph.start(drv_path(1))
    graph.finish(drv_path(1))
    graph.start(drv_path(2))
    graph.reopen(drv_path(1))
    assert graph.status(drv_path(2)) is NodeStatus.RUNNING
    assert graph.ready() == (drv_path(1),)
    graph.start(drv_path(1))
    graph.finish(drv_path(1))
    graph.finish(drv_path(2))
    assert graph.done()


def test_reopening_a_chain_inputs_first_rebuilds_it_in_order() -> None:
    drvs = chain_of((1, {}), (2, {1: ("out",)}), (3, {2: ("out",)}), (4, {3: ("out",)}))
    graph = plan(drvs, [(drv_path(4), None)])
    for n in (1, 2, 3):
        graph.start(drv_path(n))
        graph.finish(drv_path(n))
    for n in (1, 2):  # their outputs were on the lost builder; 3's elsewhere
        graph.reopen(drv_path(n))
    assert graph.status(drv_path(4)) is NodeStatus.READY  # 3 is still built
    assert graph.status(drv_path(2)) is NodeStatus.WAITING
    assert drain(graph) == [drv_path(1), drv_path(2), drv_path(4)]  # a tie: by drv path


@given(st.data())
def test_any_reopening_still_builds_everything_inputs_first(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, 12))
    links: list[tuple[int, dict[int, tuple[str, ...]]]] = [
        (n, {i: ("out",) for i in data.draw(st.sets(st.integers(1, n - 1), max_size=3)) if i})
        if n > 1
        else (1, {})
        for n in range(1, size + 1)
    ]
    drvs = chain_of(*links)
    graph = plan(drvs, [(drv_path(size), None)])
    built: set[str] = set()
    while not graph.done():
        ready = graph.ready()
        pick = data.draw(st.sampled_from(ready))
        inputs = set(drvs[pick].input_drvs) & set(graph.nodes())
        assert inputs <= built, "started before its inputs were built"
        graph.start(pick)
        graph.finish(pick)
        built.add(pick)
        if data.draw(st.booleans()):
            lost = data.draw(st.sampled_from(sorted(built)))
            for node in graph.nodes():  # inputs first, as the run does
                if node == lost:
                    graph.reopen(node)
                    built.discard(node)
    assert built == set(graph.nodes())
