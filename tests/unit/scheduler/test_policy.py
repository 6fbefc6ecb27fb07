"""The scheduling policy: Nix's machine selection rules (nix-protocols.md §2.5, §2.9) and ours."""

from __future__ import annotations

from typing import assert_never

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.model.machines import Machine
from nixdist.model.request import BuildRequest
from nixdist.scheduler import (
    Accept,
    Decision,
    Decline,
    LocalCapabilities,
    MachineState,
    Postpone,
    RejectReason,
    RemoteLoad,
    WarnRule,
    can_build_locally,
    choose,
    could_build_locally,
    policy,
    render_decision,
    render_no_machine_report,
    render_rejections,
)

DRV = "/nix/store/qgzqv036py77730dbw8x8i9c0r0dgk6f-sched-probe.drv"
LOCAL = LocalCapabilities(
    system="x86_64-linux",
    extra_platforms=frozenset({"i686-linux"}),
    system_features=frozenset({"nixos-test", "big-parallel"}),
    max_jobs=4,
)
NOT_LOCAL = LocalCapabilities(system="riscv64-linux")


def machine(
    name: str,
    systems: str = "x86_64-linux",
    *,
    max_jobs: int = 1,
    speed: float = 1.0,
    features: str = "",
    mandatory: str = "",
) -> Machine:
    return Machine(
        uri=f"ssh://{name}",
        systems=tuple(systems.split(",")),
        max_jobs=max_jobs,
        speed_factor=speed,
        supported_features=frozenset(filter(None, features.split(","))),
        mandatory_features=frozenset(filter(None, mandatory.split(","))),
    )


def state(
    m: Machine,
    load: int = 0,
    *,
    free: bool | None = None,
    down: str | None = None,
    others: int | None = None,
) -> MachineState:
    return MachineState(
        machine=m,
        load=load,
        free_slot=load < m.max_jobs if free is None else free,
        down_reason=down,
        remote_load=None if others is None else RemoteLoad(other_builds=others),
    )


def request(
    system: str = "x86_64-linux", features: str = "", *, willing: bool = True
) -> BuildRequest:
    return BuildRequest(
        drv_path=DRV,
        system=system,
        required_features=frozenset(filter(None, features.split(","))),
        am_willing=willing,
    )


def accepted(decision: Decision) -> str:
    assert isinstance(decision, Accept), decision
    return decision.machine.uri.removeprefix("ssh://")


def reasons(decision: Decision) -> dict[str, RejectReason]:
    return {r.machine.uri.removeprefix("ssh://"): r.reason for r in decision.reasons}


# --- which machines fit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "req", "fits", "reason"),
    [
        (machine("a"), request(), True, None),
        (machine("a", "aarch64-linux"), request(), False, RejectReason.WRONG_SYSTEM),
        (machine("a", "aarch64-linux,x86_64-linux"), request(), True, None),
        # builtin derivations go to any machine, whatever its systems
        (machine("a", "aarch64-linux"), request("builtin"), True, None),
        (machine("a"), request(features="kvm"), False, RejectReason.MISSING_FEATURES),
        (machine("a", features="kvm"), request(features="kvm"), True, None),
        # a mandatory feature also counts as supported
        (machine("a", mandatory="kvm"), request(features="kvm"), True, None),
        (machine("a", features="kvm"), request(features="kvm,big"), False, "missing_features"),
        (machine("a", mandatory="bench"), request(), False, RejectReason.MANDATORY_NOT_REQUIRED),
        (
            machine("a", features="kvm", mandatory="bench"),
            request(features="kvm"),
            False,
            RejectReason.MANDATORY_NOT_REQUIRED,
        ),
        (
            machine("a", features="kvm", mandatory="bench"),
            request(features="bench,kvm"),
            True,
            None,
        ),
        # a system mismatch is reported before a feature mismatch
        (machine("a", "aarch64-linux"), request(features="kvm"), False, "wrong_system"),
    ],
)
def test_machine_fits(m: Machine, req: BuildRequest, fits: bool, reason: str | None) -> None:
    decision = choose(req, NOT_LOCAL, [state(m)])
    if fits:
        assert accepted(decision) == "a"
        assert decision.reasons == ()
    else:
        assert isinstance(decision, Decline)
        assert reasons(decision) == {"a": reason}


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (request(), True),
        (request(willing=False), False),
        (request("i686-linux"), True),  # extra-platforms
        (request("aarch64-linux"), False),
        (request("builtin"), False),  # builtin is not a local system (unless listed)
        (request(features="big-parallel,nixos-test"), True),
        (request(features="kvm"), False),
    ],
)
def test_can_build_locally(req: BuildRequest, expected: bool) -> None:
    assert can_build_locally(req, LOCAL) is expected


def test_could_build_locally_ignores_willingness_but_not_max_jobs() -> None:
    assert could_build_locally(request(willing=False), LOCAL)
    assert not could_build_locally(request(), LocalCapabilities(system="x86_64-linux", max_jobs=0))
    assert not could_build_locally(request("aarch64-linux"), LOCAL)


# --- ranking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "winner"),
    [
        # lowest load / speed
        ([state(machine("a", max_jobs=4), 2), state(machine("b", max_jobs=4), 1)], "b"),
        (
            [
                state(machine("a", max_jobs=4, speed=4), 2),  # 0.5
                state(machine("b", max_jobs=4, speed=1), 1),  # 1.0
            ],
            "a",
        ),
        # equal load / speed: the faster machine
        (
            [
                state(machine("a", max_jobs=4, speed=1), 1),
                state(machine("b", max_jobs=4, speed=2), 2),
            ],
            "b",
        ),
        # all equal: the machine listed first
        ([state(machine("a", max_jobs=2), 1), state(machine("b", max_jobs=2), 1)], "a"),
        ([state(machine("b", max_jobs=2), 0), state(machine("a", max_jobs=2), 0)], "b"),
        # float speed factors (2.20+): an idle speed-1 machine beats a speed-2 one with load 1;
        # 2.8 divided integers (1 / 2 == 0 / 1 == 0) and would have taken the faster one
        ([state(machine("a", max_jobs=4, speed=2), 1), state(machine("b", max_jobs=4), 0)], "b"),
        ([state(machine("a", max_jobs=4, speed=2.5), 2), state(machine("b", max_jobs=4), 1)], "a"),
        # busy machines are not candidates even when they rank higher
        ([state(machine("a", max_jobs=1, speed=9), 1), state(machine("b", max_jobs=4), 3)], "b"),
    ],
)
def test_ranking(states: list[MachineState], winner: str) -> None:
    assert accepted(choose(request(), NOT_LOCAL, states)) == winner


def test_rank_orders_score_then_speed_then_load() -> None:
    """The ranking key: lower load/speed, then the faster machine, then the lower load (dead
    with float division: equal score and speed imply equal load; kept as in Nix)."""
    slow_busy = policy._rank(state(machine("a", max_jobs=9), 3))
    slow_idle = policy._rank(state(machine("b", max_jobs=9), 2))
    fast_busy = policy._rank(state(machine("c", max_jobs=9, speed=2), 4))
    assert slow_idle < slow_busy
    assert fast_busy < slow_idle  # 4 / 2 == 2 / 1: the faster one wins the tie
    twin = policy._rank(state(machine("d", max_jobs=9), 3))
    assert twin == slow_busy
    assert not twin < slow_busy  # equal keys keep the machine listed first


def test_speed_factor_zero_counts_as_one() -> None:
    """The machines parser turns 0 into 1 as Nix does; `choose` does not divide by zero anyway."""
    states = [state(machine("a", max_jobs=4, speed=0), 1), state(machine("b", max_jobs=4), 1)]
    decision = choose(request(), NOT_LOCAL, states)
    assert accepted(decision) == "a"
    assert render_decision(decision) == "accept ssh://a (load 1 of 4, speed 1)"


def test_accept_reports_every_other_machine_in_file_order() -> None:
    states = [
        state(machine("a", "aarch64-linux")),
        state(machine("b", max_jobs=2), 1),
        state(machine("c", max_jobs=2), 0),
        state(machine("d", features="kvm"), down="ssh: connection refused"),
        state(machine("e"), 1),
    ]
    decision = choose(request(), NOT_LOCAL, states)
    assert isinstance(decision, Accept)
    assert (decision.index, decision.load) == (2, 0)
    assert render_rejections(decision) == [
        "ssh://a: does not build x86_64-linux (systems: aarch64-linux)",
        "ssh://b: load 1 / speed 1 = 1.00, ssh://c has 0.00",
        "ssh://d: down: ssh: connection refused",
        "ssh://e: busy: 1 of 1 slots taken",
    ]
    assert render_decision(decision) == "accept ssh://c (load 0 of 2, speed 1)"


def test_outranked_details_name_the_tie_break() -> None:
    faster = choose(
        request(),
        NOT_LOCAL,
        [state(machine("a", max_jobs=4), 1), state(machine("b", max_jobs=4, speed=2), 2)],
    )
    assert render_rejections(faster) == ["ssh://a: same load/speed as ssh://b, which is faster"]
    first = choose(request(), NOT_LOCAL, [state(machine("a")), state(machine("b"))])
    assert render_rejections(first) == [
        "ssh://b: same load and speed as ssh://a, which is listed first"
    ]


# --- availability: slots, zero jobs, down, schemes, remote load ---------------------------------


def test_busy_machine_is_rejected_and_free_slot_is_trusted() -> None:
    m = machine("a", max_jobs=2)
    assert reasons(choose(request(), LOCAL, [state(m, 2)])) == {"a": RejectReason.BUSY}
    # the slot probe found no free slot although fewer locks were counted: still busy
    assert reasons(choose(request(), LOCAL, [state(m, 1, free=False)])) == {"a": "busy"}


def test_zero_jobs_machine_matches_but_is_never_chosen() -> None:
    """A max-jobs 0 machine keeps builds postponed forever (nix-protocols.md §2.5)."""
    decision = choose(request(), NOT_LOCAL, [state(machine("a", max_jobs=0))])
    assert isinstance(decision, Postpone)
    assert render_rejections(decision) == ["ssh://a: max jobs is 0: never used"]


def test_down_machine_is_skipped_and_does_not_match() -> None:
    decision = choose(request(), NOT_LOCAL, [state(machine("a"), down="no route to host")])
    assert decision == Decline(warn=True)
    assert render_rejections(decision) == ["ssh://a: down: no route to host"]


def test_unsupported_scheme_is_skipped_like_a_disabled_machine() -> None:
    ng = Machine(uri="ssh-ng://b", systems=("x86_64-linux",))
    plain = Machine(uri="local", systems=("x86_64-linux",))
    decision = choose(
        request(), NOT_LOCAL, [state(ng), state(plain)], supported_schemes=frozenset({"ssh"})
    )
    assert isinstance(decision, Decline)
    assert render_rejections(decision) == [
        "ssh-ng://b: store type 'ssh-ng' is not supported",
        "local: store type 'local' is not supported",
    ]
    assert accepted(choose(request(), NOT_LOCAL, [state(machine("a"))], supported_schemes=None))


@pytest.mark.parametrize(
    ("local_load", "others", "expected_load"),
    [(1, None, 1), (1, 0, 1), (1, 3, 4), (2, 2, 4), (0, 2, 2)],
)
def test_effective_load_adds_other_clients_builds_to_local_slots(
    local_load: int, others: int | None, expected_load: int
) -> None:
    decision = choose(
        request(), NOT_LOCAL, [state(machine("a", max_jobs=8), local_load, others=others)]
    )
    assert isinstance(decision, Accept)
    assert decision.load == expected_load


def test_remote_load_ranks_and_fills_machines() -> None:
    a = machine("a", max_jobs=4)
    b = machine("b", max_jobs=4)
    # b has fewer slots held here, but other clients run 3 builds there
    assert accepted(choose(request(), NOT_LOCAL, [state(a, 2), state(b, 0, others=3)])) == "a"
    full = choose(request(), NOT_LOCAL, [state(a, 1, others=3)])
    assert isinstance(full, Postpone)
    assert render_rejections(full) == [
        "ssh://a: busy: 1 of 4 slots taken here and 3 builds of other clients running there"
    ]


def test_a_builder_short_of_disk_is_skipped_with_that_reason() -> None:
    a = machine("a", max_jobs=4)
    b = machine("b", max_jobs=4)
    low = MachineState(
        machine=a, load=0, free_slot=True, remote_load=RemoteLoad(other_builds=0, disk_free=10)
    )
    decision = choose(request(), NOT_LOCAL, [low, state(b, 3)], min_free_disk=1 << 30)
    assert accepted(decision) == "b"
    assert render_rejections(decision) == [
        "ssh://a: low disk: 10 B free on its store, 1.0 GiB needed"
    ]
    # alone, it does not count as fitting: decline rather than wait for disk space
    only = choose(request(), NOT_LOCAL, [low], min_free_disk=1 << 30)
    assert isinstance(only, Decline)


# --- postpone, decline -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "req", "local", "expected"),
    [
        # a fitting machine is busy and Nix cannot build it: ask again later
        ([state(machine("a"), 1)], request(), NOT_LOCAL, Postpone),
        ([state(machine("a"), 1)], request(willing=False), LOCAL, Postpone),
        # ... but Nix can build it locally right now: decline quietly
        ([state(machine("a"), 1)], request(), LOCAL, Decline),
        # nothing fits: decline
        ([state(machine("a", "aarch64-linux"))], request(), NOT_LOCAL, Decline),
        ([state(machine("a", "aarch64-linux"), 1)], request(), LOCAL, Decline),
    ],
)
def test_postpone_or_decline(
    states: list[MachineState],
    req: BuildRequest,
    local: LocalCapabilities,
    expected: type[Decision],
) -> None:
    assert type(choose(req, local, states)) is expected


@pytest.mark.parametrize(
    ("req", "local", "rule", "warn"),
    [
        (request(), NOT_LOCAL, WarnRule.AM_WILLING, True),
        (request(), LOCAL, WarnRule.AM_WILLING, False),
        # 2.8 warns while Nix's own slots are full; 2.18+ does not
        (request(willing=False), LOCAL, WarnRule.AM_WILLING, True),
        (request(willing=False), LOCAL, WarnRule.MAX_JOBS, False),
        (request(), NOT_LOCAL, WarnRule.MAX_JOBS, True),
        (request(), LocalCapabilities(system="x86_64-linux", max_jobs=0), WarnRule.MAX_JOBS, True),
    ],
)
def test_decline_warning_level(
    req: BuildRequest, local: LocalCapabilities, rule: WarnRule, warn: bool
) -> None:
    decision = choose(req, local, [state(machine("a", "aarch64-linux"))], warn_rule=rule)
    assert isinstance(decision, Decline)
    assert (decision.warn, decision.permanently) == (warn, False)


def test_no_machines_declines_permanently() -> None:
    decision = choose(request(), NOT_LOCAL, [])
    assert decision == Decline(permanently=True)
    assert render_decision(decision) == "decline permanently: no machines are configured"


def test_render_decision() -> None:
    assert render_decision(Postpone()) == "postpone: every machine that fits is busy"
    assert render_decision(Decline(warn=True)) == "decline: no machine can take this build"


def test_feature_rejection_details() -> None:
    states = [
        state(machine("a")),
        state(machine("b", features="kvm")),
        state(machine("c", features="kvm,big", mandatory="bench,gpu")),
    ]
    decision = choose(request(features="kvm,big"), NOT_LOCAL, states)
    assert render_rejections(decision) == [
        "ssh://a: lacks features big, kvm",
        "ssh://b: lacks feature big",
        "ssh://c: only takes builds that require its mandatory features bench, gpu",
    ]


# --- the "Failed to find a machine" report ----------------------------------------------------


#: The machines both recorded reports were made with.
REPORT_MACHINES = [
    Machine(
        uri="ssh://nonexistent.invalid",
        systems=("x86_64-linux", "i686-linux"),
        max_jobs=2,
        supported_features=frozenset({"kvm"}),
        mandatory_features=frozenset({"benchmark"}),
    ),
    Machine(uri="ssh://b2", systems=("aarch64-linux",)),
]


def test_no_machine_report_matches_nix_2_8() -> None:
    """Recorded from nix-build (Nix 2.8.0) with the same request and machines, stderr not a tty."""
    machines = REPORT_MACHINES
    req = request(features="kvm,big-parallel", willing=False)
    decision = choose(req, LOCAL, [state(m) for m in machines])
    assert decision == Decline(warn=True)
    assert render_no_machine_report(req, machines) == (
        "Failed to find a machine for remote build!\n"
        "derivation: qgzqv036py77730dbw8x8i9c0r0dgk6f-sched-probe.drv\n"
        "required (system, features): (x86_64-linux, big-parallel, kvm)\n"
        "2 available machines:\n"
        "(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n"
        "(x86_64-linux, i686-linux, 2, kvm, benchmark)\n"
        "(aarch64-linux, 1, , )"
    )


def test_no_machine_report_matches_nix_2_34() -> None:
    """Recorded from nix-build (Nix 2.34.8, its own build-remote) with the same request and
    machines: lists in brackets (2.12+), systems sorted (2.20+)."""
    machines = REPORT_MACHINES
    req = request(features="kvm,big-parallel", willing=False)
    assert render_no_machine_report(req, machines, bracketed=True) == (
        "Failed to find a machine for remote build!\n"
        "derivation: qgzqv036py77730dbw8x8i9c0r0dgk6f-sched-probe.drv\n"
        "required (system, features): (x86_64-linux, [big-parallel, kvm])\n"
        "2 available machines:\n"
        "(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n"
        "([i686-linux, x86_64-linux], 2, [kvm], [benchmark])\n"
        "([aarch64-linux], 1, [], [])"
    )


def test_no_machine_report_colours_values_like_nix() -> None:
    req = BuildRequest(drv_path="", system="x86_64-linux", am_willing=True)
    text = render_no_machine_report(req, [], color=True)
    assert text.splitlines()[1:4] == [
        "derivation: \x1b[35;1m<unknown>\x1b[0m",
        "required (system, features): (\x1b[35;1mx86_64-linux\x1b[0m, \x1b[35;1m\x1b[0m)",
        "\x1b[35;1m0\x1b[0m available machines:",
    ]


# --- invariants --------------------------------------------------------------------------------

SYSTEMS = ("x86_64-linux", "aarch64-linux", "i686-linux")
FEATURES = ("kvm", "big-parallel", "benchmark", "gpu")


@st.composite
def machine_states(draw: st.DrawFn) -> MachineState:
    max_jobs = draw(st.integers(0, 4))
    m = Machine(
        uri=f"ssh://m{draw(st.integers(0, 99))}",
        systems=tuple(draw(st.lists(st.sampled_from(SYSTEMS), min_size=1, max_size=3))),
        max_jobs=max_jobs,
        speed_factor=draw(st.sampled_from((0.5, 1.0, 1.5, 2.0, 3.0, 10.0))),
        supported_features=draw(st.frozensets(st.sampled_from(FEATURES))),
        mandatory_features=draw(st.frozensets(st.sampled_from(FEATURES), max_size=1)),
    )
    load = draw(st.integers(0, max_jobs))
    return MachineState(
        machine=m,
        load=load,
        free_slot=draw(st.booleans()) if load < max_jobs else False,
        down_reason=draw(st.none() | st.just("refused")),
        remote_load=draw(
            st.none() | st.builds(RemoteLoad, other_builds=st.integers(0, 5), disk_free=st.none())
        ),
    )


requests = st.builds(
    BuildRequest,
    drv_path=st.just(DRV),
    system=st.sampled_from((*SYSTEMS, "builtin")),
    required_features=st.frozensets(st.sampled_from(FEATURES)),
    am_willing=st.booleans(),
)
locals_ = st.builds(
    LocalCapabilities,
    system=st.sampled_from(SYSTEMS),
    extra_platforms=st.frozensets(st.sampled_from(SYSTEMS)),
    system_features=st.frozensets(st.sampled_from(FEATURES)),
    max_jobs=st.integers(0, 2),
)


def _fits(req: BuildRequest, m: Machine) -> bool:
    return (
        (req.system == "builtin" or req.system in m.systems)
        and req.required_features <= m.supported_features | m.mandatory_features
        and m.mandatory_features <= req.required_features
    )


def _eligible(req: BuildRequest, s: MachineState) -> bool:
    return (
        _fits(req, s.machine)
        and s.down_reason is None
        and s.free_slot
        and s.load < s.machine.max_jobs
        and s.effective_load < s.machine.max_jobs
    )


@given(requests, locals_, st.lists(machine_states(), max_size=6))
def test_choose_invariants(
    req: BuildRequest, local: LocalCapabilities, states: list[MachineState]
) -> None:
    decision = choose(req, local, states)
    assert choose(req, local, states) == decision  # deterministic
    eligible = [s for s in states if _eligible(req, s)]
    match decision:
        case Accept(machine=m, index=index, load=load):
            chosen = states[index]
            assert chosen.machine is m
            assert _eligible(req, chosen)  # system, features, mandatory, slot, not down
            assert req.required_features <= m.supported_features | m.mandatory_features
            assert m.mandatory_features <= req.required_features
            assert chosen.free_slot
            assert chosen.load < m.max_jobs
            assert chosen.down_reason is None
            assert load == chosen.effective_load
            best = min(s.effective_load / s.machine.speed_factor for s in eligible)
            assert load / m.speed_factor == best
            assert len(decision.reasons) == len(states) - 1
        case Postpone():
            assert not eligible
            assert any(_fits(req, s.machine) and s.down_reason is None for s in states)
            assert not can_build_locally(req, local)
            assert len(decision.reasons) == len(states)
        case Decline(permanently=permanently, warn=warn):
            assert not eligible
            assert permanently == (not states)
            if states:
                matching = any(_fits(req, s.machine) and s.down_reason is None for s in states)
                assert not matching or can_build_locally(req, local)
                assert warn == (not can_build_locally(req, local))
            assert len(decision.reasons) == len(states)
        case _:
            assert_never(decision)
    assert all(r.machine in [s.machine for s in states] for r in decision.reasons)
    assert len(render_rejections(decision)) == len(decision.reasons)
