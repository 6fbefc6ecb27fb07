"""Which builder takes a derivation: Nix's machine selection as one pure function.

`choose(request, local, states)` is the whole decision. It takes no clock, no lock and no file:
the caller gathers the facts (slot probes under the main lock, health, remote load), calls
`choose`, then acts on the `Decision` (like httpcore's `_assign_requests_to_connections`).
`nixdist explain` calls the same function, so what it prints is what the hook would do.

Nix's rules (``build-remote.cc``, 2.8; unchanged in structure up to 2.35; nix-protocols.md §2.5,
§2.9), for one ``try`` with system S and required features R:

* can build locally = am_willing and (S is the local `system` or in `extra-platforms`)
  and R ⊆ local `system-features`.
* A machine *matches* ("right type") when it is enabled, S is one of its systems or S is
  ``builtin`` (any machine takes builtins), R ⊆ supported | mandatory, and mandatory ⊆ R.
* A matching machine is *eligible* when it has a free slot (fewer than max-jobs slot locks
  held). A matching machine with max-jobs 0 is never eligible, yet it still counts as matching.
* The best eligible machine has the lowest load / speed factor; ties go to the higher speed
  factor, then to the lower load, then to the machine listed first.
* No eligible machine: ``# postpone`` when some machine matches and the build cannot be done
  locally; ``# decline`` otherwise, with the "Failed to find a machine for remote build!"
  report (`render_no_machine_report`) at warning level when the build cannot be done locally
  (2.8; 2.18+ decides the level with max-jobs > 0 instead of am_willing, see `WarnRule`),
  at chatty level otherwise. No machines at all: ``# decline-permanently``.

Speed factors are floats, as in Nix 2.20+. Nix 2.8 kept them as unsigned integers and divided
``load / speed`` in integers, so there a load of 1 on a speed-2 machine tied with an idle
speed-1 machine (both 0) and the faster one won; here 0.5 > 0, and the idle machine wins.
A speed factor ≤ 0 (which the machines parser never produces) counts as 1, like Nix's 0 → 1.

nixdist's additions, all of which only ever remove machines or raise loads:

* A machine that is down (`MachineState.down_reason`, from health tracking), whose store URI
  scheme the caller cannot speak (`supported_schemes`), or that reported less free disk than
  `min_free_disk` is *not enabled*: like a machine that Nix disabled after a failed
  connection, it is skipped and does not count as matching.
* When the builder's own report is known (`MachineState.remote_load`), the effective load is
  the slots held on this host plus the builds running there that none of them accounts for
  (other clients', or the builder's own users'): the caller works out ``other_builds`` from
  the builder's count minus the slots it held when the probe ran, so a report a few seconds
  old never hides our own builds finishing. A machine whose effective load reaches its
  max-jobs is busy even if a slot is free here (other clients are using it).

Every machine that is not chosen gets a `Rejection` with a `RejectReason` and a line of text,
in machines-file order, so that ``explain`` and ``status`` can say "b2: lacks feature kvm".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, assert_never

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from nixdist.model.machines import Machine
    from nixdist.model.request import BuildRequest

BUILTIN_SYSTEM = "builtin"
"""The system of Nix's builtin derivations (``builtin:fetchurl``): every machine takes them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalCapabilities:
    """The local machine's settings, as received in the hook's settings block."""

    system: str
    extra_platforms: frozenset[str] = frozenset()
    system_features: frozenset[str] = frozenset()
    max_jobs: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteLoad:
    """What a builder reported about itself (probed over its connection, cached briefly)."""

    other_builds: int  # builds running there that no slot on this machine accounts for
    disk_free: int | None = None  # bytes free on its store's file system
    load_per_core: float | None = None  # shown in reasons; not used for ranking


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineState:
    """Everything `choose` needs to know about one machine right now.

    `load` is the number of slot locks held on this host (`nixdist.state.slots`), `free_slot`
    whether one of its slots could be locked. `down_reason` is None when the machine is usable.
    `remote_load` is None when the builder's own numbers are unknown.
    """

    machine: Machine
    load: int
    free_slot: bool
    down_reason: str | None = None
    remote_load: RemoteLoad | None = None

    @property
    def effective_load(self) -> int:
        """The load used for ranking: slots held here plus the builds of other clients."""
        if self.remote_load is None:
            return self.load
        return self.load + self.remote_load.other_builds


class RejectReason(StrEnum):
    """Why a machine was not chosen; the first that applies, in this order."""

    WRONG_SYSTEM = "wrong_system"
    MISSING_FEATURES = "missing_features"
    MANDATORY_NOT_REQUIRED = "mandatory_not_required"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    DOWN = "down"
    LOW_DISK = "low_disk"
    ZERO_JOBS = "zero_jobs"
    BUSY = "busy"
    OUTRANKED = "outranked"


_NOT_MATCHING = frozenset(
    {
        RejectReason.WRONG_SYSTEM,
        RejectReason.MISSING_FEATURES,
        RejectReason.MANDATORY_NOT_REQUIRED,
        RejectReason.UNSUPPORTED_SCHEME,
        RejectReason.DOWN,
        RejectReason.LOW_DISK,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """One machine that was not chosen, and why, in words (`detail`)."""

    machine: Machine
    reason: RejectReason
    detail: str

    @property
    def matches(self) -> bool:
        """Whether the machine counted as "right type" (enabled, system and features fit)."""
        return self.reason not in _NOT_MATCHING


class _Verdicts:
    """What `choose` looked at, to say on demand why each other machine was not chosen.

    Deciding needs no text; the reasons (one `Rejection` per machine not chosen) are built only
    when asked for — the hook asks after it has replied to Nix — and then kept.
    """

    __slots__ = ("_chosen", "_min_free_disk", "_rejections", "_request", "_schemes", "_states")

    def __init__(
        self,
        request: BuildRequest,
        states: Sequence[MachineState],
        supported_schemes: frozenset[str] | None,
        min_free_disk: int,
        chosen: int | None,
    ) -> None:
        self._request = request
        self._states = tuple(states)
        self._schemes = supported_schemes
        self._min_free_disk = min_free_disk
        self._chosen = chosen
        self._rejections: tuple[Rejection, ...] | None = None

    def rejections(self) -> tuple[Rejection, ...]:
        if self._rejections is None:
            self._rejections = tuple(self._explain())
        return self._rejections

    def _explain(self) -> Iterator[Rejection]:
        best = None if self._chosen is None else self._states[self._chosen]
        for index, state in enumerate(self._states):
            if index == self._chosen:
                continue
            reason = _mismatch(self._request, state.machine) or _unavailable(
                state, self._schemes, self._min_free_disk
            )
            if reason is not None:
                detail = _describe(reason, state, self._request, self._min_free_disk)
                yield Rejection(machine=state.machine, reason=reason, detail=detail)
            elif best is not None:
                yield _outranked(state, best)


def _no_reasons() -> tuple[Rejection, ...]:
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Build on `machine` (position `index` in the states given to `choose`)."""

    machine: Machine
    index: int
    load: int
    explain: Callable[[], tuple[Rejection, ...]] = field(
        default=_no_reasons, compare=False, repr=False
    )

    @property
    def reasons(self) -> tuple[Rejection, ...]:
        """Why each other machine was not chosen, in machines-file order."""
        return self.explain()


@dataclass(frozen=True, slots=True, kw_only=True)
class Postpone:
    """Ask again later: a machine fits but is busy, and the build cannot be done locally."""

    explain: Callable[[], tuple[Rejection, ...]] = field(
        default=_no_reasons, compare=False, repr=False
    )

    @property
    def reasons(self) -> tuple[Rejection, ...]:
        """Why each machine cannot take the build now, in machines-file order."""
        return self.explain()


@dataclass(frozen=True, slots=True, kw_only=True)
class Decline:
    """Let Nix build locally (or fail). `warn`: print the no-machine report as a warning."""

    permanently: bool = False
    warn: bool = False
    explain: Callable[[], tuple[Rejection, ...]] = field(
        default=_no_reasons, compare=False, repr=False
    )

    @property
    def reasons(self) -> tuple[Rejection, ...]:
        """Why no machine can take the build, in machines-file order."""
        return self.explain()


Decision = Accept | Postpone | Decline


class WarnRule(StrEnum):
    """How a decline decides between a warning and a chatty message (nix-protocols.md §2.9)."""

    AM_WILLING = "am-willing"
    """Nix 2.8: warn unless the build can be done locally right now."""
    MAX_JOBS = "max-jobs"
    """Nix 2.18+: warn unless the build could be done locally at all (max-jobs > 0)."""


def _system_fits(system: str, local: LocalCapabilities) -> bool:
    return system in {local.system, *local.extra_platforms}


def can_build_locally(request: BuildRequest, local: LocalCapabilities) -> bool:
    """Nix's ``canBuildLocally``: willing now, right system, every required feature local."""
    return (
        request.am_willing
        and _system_fits(request.system, local)
        and request.required_features <= local.system_features
    )


def could_build_locally(request: BuildRequest, local: LocalCapabilities) -> bool:
    """Nix 2.18+'s ``couldBuildLocally``: like `can_build_locally` with max-jobs > 0 for willing."""
    return (
        local.max_jobs > 0
        and _system_fits(request.system, local)
        and request.required_features <= local.system_features
    )


def _speed(machine: Machine) -> float:
    return machine.speed_factor if machine.speed_factor > 0 else 1.0


def _words(features: Iterable[str]) -> str:
    return ", ".join(sorted(features))


def _plural(word: str, items: frozenset[str]) -> str:
    return word if len(items) == 1 else word + "s"


def _mismatch(request: BuildRequest, machine: Machine) -> RejectReason | None:
    """Why `machine` can never take `request` whatever its state, or None if it fits."""
    if request.system != BUILTIN_SYSTEM and request.system not in machine.systems:
        return RejectReason.WRONG_SYSTEM
    required = request.required_features
    if required and not required <= machine.supported_features | machine.mandatory_features:
        return RejectReason.MISSING_FEATURES
    if machine.mandatory_features and not machine.mandatory_features <= required:
        return RejectReason.MANDATORY_NOT_REQUIRED
    return None


def machine_fits(request: BuildRequest, machine: Machine) -> bool:
    """Whether `machine` could ever take `request`: system and features fit (its state aside)."""
    return _mismatch(request, machine) is None


def _unavailable(
    state: MachineState, supported_schemes: frozenset[str] | None, min_free_disk: int
) -> RejectReason | None:
    """Why a fitting machine cannot take a build now, or None if it is eligible."""
    machine = state.machine
    if supported_schemes is not None and machine.scheme not in supported_schemes:
        return RejectReason.UNSUPPORTED_SCHEME
    if state.down_reason is not None:
        return RejectReason.DOWN
    report = state.remote_load
    if report is not None and report.disk_free is not None and report.disk_free < min_free_disk:
        return RejectReason.LOW_DISK
    if machine.max_jobs <= 0:
        return RejectReason.ZERO_JOBS
    if not state.free_slot or state.effective_load >= machine.max_jobs:
        return RejectReason.BUSY
    return None


def _describe(  # noqa: C901, PLR0911 - one sentence per reason
    reason: RejectReason, state: MachineState, request: BuildRequest, min_free_disk: int
) -> str:
    """The words for a rejection other than `OUTRANKED`."""
    machine = state.machine
    match reason:
        case RejectReason.WRONG_SYSTEM:
            return f"does not build {request.system} (systems: {', '.join(machine.systems)})"
        case RejectReason.MISSING_FEATURES:
            missing = (
                request.required_features - machine.supported_features - machine.mandatory_features
            )
            return f"lacks {_plural('feature', missing)} {_words(missing)}"
        case RejectReason.MANDATORY_NOT_REQUIRED:
            unrequested = machine.mandatory_features - request.required_features
            return (
                f"only takes builds that require its mandatory "
                f"{_plural('feature', unrequested)} {_words(unrequested)}"
            )
        case RejectReason.UNSUPPORTED_SCHEME:
            return f"store type {machine.scheme or machine.uri!r} is not supported"
        case RejectReason.DOWN:
            return f"down: {state.down_reason}"
        case RejectReason.LOW_DISK:
            free = 0 if state.remote_load is None else state.remote_load.disk_free or 0
            return (
                f"low disk: {format_bytes(free)} free on its store, "
                f"{format_bytes(min_free_disk)} needed"
            )
        case RejectReason.ZERO_JOBS:
            return "max jobs is 0: never used"
        case RejectReason.BUSY:
            if state.remote_load is not None and state.remote_load.other_builds > 0:
                return (
                    f"busy: {state.load} of {machine.max_jobs} slots taken here and "
                    f"{state.remote_load.other_builds} builds of other clients running there"
                )
            return f"busy: {state.load} of {machine.max_jobs} slots taken"
        case RejectReason.OUTRANKED:  # pragma: no cover - `_outranked` words these
            raise ValueError("an outranked machine is described against the chosen one")
        case _:  # pragma: no cover - exhaustive
            assert_never(reason)


def _rank(state: MachineState) -> tuple[float, float, int]:
    """Nix's ranking key, lowest best: load/speed, then higher speed, then lower load.

    Equal keys keep the machine listed first (the caller compares with a strict ``<``).
    """
    speed = _speed(state.machine)
    load = state.effective_load
    return (load / speed, -speed, load)


def _outranked(loser: MachineState, best: MachineState) -> Rejection:
    loser_score, loser_speed, _ = _rank(loser)
    best_score, best_speed, _ = _rank(best)
    uri = best.machine.uri
    if loser_score != best_score:
        why = (
            f"load {loser.effective_load} / speed {-loser_speed:g} = {loser_score:.2f}, "
            f"{uri} has {best_score:.2f}"
        )
    elif loser_speed != best_speed:
        why = f"same load/speed as {uri}, which is faster"
    else:  # equal score and speed imply equal load
        why = f"same load and speed as {uri}, which is listed first"
    return Rejection(machine=loser.machine, reason=RejectReason.OUTRANKED, detail=why)


def choose(
    request: BuildRequest,
    local: LocalCapabilities,
    states: Sequence[MachineState],
    *,
    supported_schemes: frozenset[str] | None = None,
    warn_rule: WarnRule = WarnRule.AM_WILLING,
    min_free_disk: int = 0,
) -> Decision:
    """Decide where `request` is built, given every machine's state in machines-file order.

    `supported_schemes` (e.g. ``frozenset({"ssh"})``) lists the store URI schemes the caller can
    open; None accepts every machine, as Nix does. A machine that reported less than
    `min_free_disk` bytes free on its store is skipped like a machine that is down.

    The decision's `reasons` are worded only when read (see `_Verdicts`).
    """
    if not states:
        return Decline(permanently=True)
    right_type = False
    best: int | None = None
    best_key: tuple[float, float, int] | None = None
    for index, state in enumerate(states):
        if _mismatch(request, state.machine) is not None:
            continue
        reason = _unavailable(state, supported_schemes, min_free_disk)
        if reason is not None:
            right_type = right_type or reason not in _NOT_MATCHING
            continue
        right_type = True
        key = _rank(state)
        if best_key is None or key < best_key:
            best, best_key = index, key
    explain = _Verdicts(request, states, supported_schemes, min_free_disk, best).rejections
    if best is not None:
        chosen = states[best]
        return Accept(
            machine=chosen.machine, index=best, load=chosen.effective_load, explain=explain
        )
    local_now = can_build_locally(request, local)
    if right_type and not local_now:
        return Postpone(explain=explain)
    match warn_rule:
        case WarnRule.AM_WILLING:
            quiet = local_now
        case WarnRule.MAX_JOBS:
            quiet = could_build_locally(request, local)
        case _:  # pragma: no cover - exhaustive
            assert_never(warn_rule)
    return Decline(warn=not quiet, explain=explain)


def finish_time(work: float, machine: Machine, available_in: float) -> float:
    """When a build of `work` seconds (at speed factor 1) would end on `machine`, whose next
    slot frees in `available_in` seconds: its speed factor divides the work."""
    return max(0.0, available_in) + work / _speed(machine)


def earliest_finish(
    work: float, options: Sequence[tuple[Machine, float]]
) -> tuple[Machine, float] | None:
    """Of (machine, seconds until it has a free slot) `options`, the one that would finish a
    build of `work` first, and when (ties: the one listed first); None without options.

    Nix's rule (`choose`) takes the least loaded free machine *now*; ``nixdist build``, which
    knows every build's expected time, asks this too: near the end of a run a slow machine's
    free slot can finish later than a fast machine that frees up in a moment (HEFT's earliest
    finish time, Topcuoglu et al., 2002)."""
    best: tuple[Machine, float] | None = None
    for machine, available_in in options:
        end = finish_time(work, machine, available_in)
        if best is None or end < best[1]:
            best = (machine, end)
    return best


def format_bytes(count: int) -> str:
    """``1.5 GiB``: a byte count for people."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":  # noqa: PLR2004 - binary units
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


def render_rejections(decision: Decision) -> list[str]:
    """One line per machine not chosen, in file order: ``ssh://b2: lacks feature kvm``."""
    return [f"{r.machine.uri}: {r.detail}" for r in decision.reasons]


def render_decision(decision: Decision) -> str:
    """A one-line summary of the decision, for logs, ``explain`` and ``status``."""
    match decision:
        case Accept(machine=machine, load=load):
            return (
                f"accept {machine.uri} (load {load} of {machine.max_jobs}, "
                f"speed {_speed(machine):g})"
            )
        case Postpone():
            return "postpone: every machine that fits is busy"
        case Decline(permanently=True):
            return "decline permanently: no machines are configured"
        case Decline():
            return "decline: no machine can take this build"
        case _:  # pragma: no cover - exhaustive
            assert_never(decision)


_ANSI_WARNING = "\x1b[35;1m"
_ANSI_NORMAL = "\x1b[0m"


def render_no_machine_report(
    request: BuildRequest,
    machines: Sequence[Machine],
    *,
    bracketed: bool = False,
    color: bool = False,
) -> str:
    """Nix's "Failed to find a machine for remote build!" text, line for line.

    Feature sets are sorted (Nix prints `std::set`s). Nix 2.8 prints the lists bare and the
    systems in machine order; 2.12 put brackets around the lists and 2.20 sorted the systems:
    `bracketed` gives that later form. Nix wraps each inserted value in bold magenta;
    `color=True` does the same. The derivation is shown by its base name.
    """

    def value(text: object) -> str:
        return f"{_ANSI_WARNING}{text}{_ANSI_NORMAL}" if color else str(text)

    def listed(items: str) -> str:
        return f"[{items}]" if bracketed else items

    drv = request.drv_path.rsplit("/", 1)[-1] or "<unknown>"
    lines = [
        "Failed to find a machine for remote build!",
        f"derivation: {value(drv)}",
        (
            "required (system, features): "
            f"({value(request.system)}, {listed(value(_words(request.required_features)))})"
        ),
        f"{value(len(machines))} available machines:",
        "(systems, maxjobs, supportedFeatures, mandatoryFeatures)",
    ]
    for m in machines:
        systems = _words(m.systems) if bracketed else ", ".join(m.systems)
        lines.append(
            f"({listed(value(systems))}, {value(m.max_jobs)}, "
            f"{listed(value(_words(m.supported_features)))}, "
            f"{listed(value(_words(m.mandatory_features)))})"
        )
    return "\n".join(lines)
