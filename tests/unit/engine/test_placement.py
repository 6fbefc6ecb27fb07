"""Earliest finish: a build goes to (or waits for) a machine that finishes it clearly sooner."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nixdist.engine.placement import MARGIN, Better, Placement
from nixdist.model.machines import Machine
from nixdist.model.request import BuildRequest
from nixdist.scheduler.policy import earliest_finish, finish_time

SLOW = Machine(uri="ssh://slow", systems=("x86_64-linux",), max_jobs=2, speed_factor=1)
FAST = Machine(uri="ssh://fast", systems=("x86_64-linux",), max_jobs=1, speed_factor=4)
KVM = Machine(  # fast, but only for builds that ask for kvm (mandatory)
    uri="ssh://kvm",
    systems=("x86_64-linux",),
    speed_factor=8,
    mandatory_features=frozenset({"kvm"}),
)
REQUEST = BuildRequest(drv_path="/nix/store/x.drv", system="x86_64-linux", am_willing=False)


def everyone(machine: Machine) -> bool:
    return machine.max_jobs > 0


def test_a_free_fast_machine_is_taken_instead_of_a_slow_one() -> None:
    placement = Placement([SLOW, FAST])
    assert placement.better(REQUEST, 4.0, SLOW, usable=everyone, now=0) == Better(
        machine=FAST, available_in=0.0
    )


def test_a_build_waits_for_a_fast_machine_about_to_be_free_but_not_for_long() -> None:
    placement = Placement([SLOW, FAST])
    placement.started("/nix/store/y.drv", FAST, 4.0, now=0.0)  # ends at 1.0 on speed 4
    assert placement.better(REQUEST, 4.0, SLOW, usable=everyone, now=0.5) == Better(
        machine=FAST, available_in=0.5
    )
    assert placement.better(REQUEST, 1.0, SLOW, usable=everyone, now=0.0) is None  # 1.25 > 0.8
    placement.ended("/nix/store/y.drv")
    assert placement.available_in(FAST, 0.5) == 0.0


def test_a_machine_that_is_down_or_does_not_fit_is_never_preferred() -> None:
    placement = Placement([SLOW, FAST, KVM])
    assert placement.better(REQUEST, 4.0, SLOW, usable=lambda m: m is not FAST, now=0) is None
    kvm = BuildRequest(
        drv_path="/nix/store/k.drv",
        system="x86_64-linux",
        required_features=frozenset({"kvm"}),
        am_willing=False,
    )
    assert placement.better(kvm, 4.0, KVM, usable=everyone, now=0) is None  # only it fits


@given(
    st.floats(0.01, 1000),
    st.lists(st.tuples(st.sampled_from([SLOW, FAST, KVM]), st.floats(0, 100)), min_size=1),
)
def test_earliest_finish_is_the_least_end(
    work: float, options: list[tuple[Machine, float]]
) -> None:
    found = earliest_finish(work, options)
    assert found is not None
    machine, end = found
    assert end == min(finish_time(work, m, a) for m, a in options)
    assert (machine, end) in [(m, finish_time(work, m, a)) for m, a in options]
    assert MARGIN < 1
