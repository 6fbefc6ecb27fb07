"""`MachinePicker`: which builder takes a build, with Nix's rules and this host's view.

It answers the hook's ``try`` requests (`nixdist.hook.main`) and, after ``# accept``, gives
the build (`nixdist.hook.build`) another builder when one fails under it: both call down into
it, it never calls up. Before choosing, the builders that could take the derivation and whose
load report is older than the probe interval are asked for a new one, in parallel, over their
control masters (`nixdist.transport.probe`); reports live in the state database for every hook
process to reuse. A builder that cannot be reached (connection or greeting) is marked down —
for the rest of this process and, with back-off, for every other hook
(`nixdist.state.health`) — and the choice is made again without it. Every decision is recorded
in the history.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import TYPE_CHECKING, Final, Protocol, assert_never

from nixdist.errors import NixdistError, ProtocolError, TransportError
from nixdist.protocol.hook import Reply
from nixdist.protocol.logjson import Verbosity
from nixdist.scheduler.policy import (
    Accept,
    Decision,
    Decline,
    LocalCapabilities,
    MachineState,
    Postpone,
    RejectReason,
    choose,
    machine_fits,
    render_no_machine_report,
    render_rejections,
)
from nixdist.state.once import first_time
from nixdist.state.paths import ssh_dir
from nixdist.state.slots import SlotDirectory
from nixdist.state.view import machine_state

# Imported where first needed, not here: the state database (sqlite3), ssh and the store
# protocols. Nix waits for the hook's first reply with its whole build loop, so a decline must
# not pay for what only an accept uses (``make bench``, W4).

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.hook.picked import Picked
    from nixdist.model.machines import Machine
    from nixdist.model.request import BuildRequest
    from nixdist.protocol.hook import HookSettings
    from nixdist.settings import Settings
    from nixdist.state.advisory import Advisory
    from nixdist.state.db import StateDB
    from nixdist.state.health import Health
    from nixdist.state.history import History
    from nixdist.state.rows import ProbeRow
    from nixdist.state.slots import SlotLease
    from nixdist.transport.openssh import ControlMasters
    from nixdist.transport.probe import BuilderReport

#: Store URI schemes nixdist can build on ("": a local store, by path or as ``local?…``);
#: other machines are skipped with a warning.
SUPPORTED_SCHEMES: Final = frozenset({"ssh", "ssh-ng", ""})
#: While failing over, how often to look for a free slot again, and for how long at most.
FAILOVER_POLL_S: Final = 0.5
FAILOVER_WAIT_S: Final = 600.0
#: While waiting for a busy machine's slot instead of postponing, how often to look.
SLOT_POLL_S: Final = 0.02


class Say(Protocol):
    """What the picker says, and to whom: the hook's `HookOutput` (to Nix), or the console of
    ``nixdist build``."""

    def wants(self, level: Verbosity) -> bool: ...

    def log(self, level: Verbosity, text: str) -> None: ...

    def debug(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...


def _waiting_helps(decision: Postpone) -> bool:
    """Whether a slot may free up soon: some machine that fits is busy (not max-jobs 0)."""
    return any(r.reason is RejectReason.BUSY for r in decision.reasons)


class MachinePicker:
    """Answers ``try`` requests: Nix's selection rules, with the reasons kept."""

    def __init__(
        self,
        machines: Sequence[Machine],
        settings: HookSettings,
        config: Settings,
        environ: Mapping[str, str],
        out: Say,
    ) -> None:
        """`settings` are what Nix sent, `config` nixdist's own (`nixdist.settings`)."""
        self.machines = tuple(machines)
        self.environ = environ
        self.out = out
        self.config = config
        self.local = LocalCapabilities(
            system=settings.system,
            extra_platforms=settings.extra_platforms,
            system_features=settings.system_features,
            max_jobs=settings.max_jobs,
        )
        self.slots = SlotDirectory.default(environ=environ)
        self.slots.ensure()
        self.down: dict[str, str] = {}  # failed in this process: not retried here at all
        self.bracketed_reports = settings.bracketed_reports

    # The state database and ssh are set up on first use (a decline needs neither).

    @functools.cached_property
    def advice(self) -> Advisory:
        from nixdist.state.advisory import Advisory  # noqa: PLC0415 - see the imports

        return Advisory.open(self.config.state_dir, self.out.debug)

    def close(self) -> None:
        """Close the state database, if it was opened."""
        advice = self.__dict__.get("advice")
        if advice is not None:
            advice.close()

    @functools.cached_property
    def health(self) -> Health:
        from nixdist.state.health import Health  # noqa: PLC0415 - see the imports

        return Health(self.advice)

    @functools.cached_property
    def history(self) -> History:
        from nixdist.state.history import History  # noqa: PLC0415 - see the imports

        return History(self.advice)

    @functools.cached_property
    def masters(self) -> ControlMasters:
        from nixdist.transport.openssh import ControlMasters  # noqa: PLC0415 - see the imports

        return ControlMasters(
            ssh_dir(self.config.state_dir), connect_timeout_s=self.config.connect_timeout_s
        )

    def down_reason(self, uri: str) -> str | None:
        """Why `uri` is skipped now: it failed in this process, or recently in another."""
        if uri in self.down:
            return self.down[uri]
        record = self.health.down(uri)
        return None if record is None else record.describe(time.time())

    def mark_down(self, machine: Machine, reason: str) -> None:
        """`machine` failed: skip it here from now on and in other hooks for a while."""
        from nixdist.state.health import backoff  # noqa: PLC0415 - see the imports

        self.down[machine.uri] = reason
        record = self.health.failed(machine.uri, reason)
        self.out.error(
            f"cannot use '{machine.uri}': {reason}; skipping it for {backoff(record.failures):g} s"
        )

    # -- load reports ------------------------------------------------------------------------

    def _probes(self) -> dict[str, ProbeRow]:
        return self.advice(lambda db: {row.uri: row for row in db.all_probes()}, {})

    def refresh_loads(self, fitting: Sequence[Machine]) -> tuple[dict[str, ProbeRow], set[str]]:
        """The load reports of `fitting` (the machines that could take the build), and which
        of them were just renewed.

        Reports older than the probe interval are renewed first, in parallel; a builder that
        cannot be reached is marked down; one whose report says little or nothing is not (the
        report is advice: the slots count for what it does not tell). A renewed report is
        stored by `decide`, once it has counted this host's slots on the builder under the
        main lock it takes anyway (the lock is taken once per try).
        """
        if not fitting or self.config.probe_interval_s <= 0:
            return {}, set()
        rows = self._probes()
        if not self.advice.available:
            return rows, set()
        now = time.time()
        stale = [
            m
            for m in fitting
            if m.scheme in SUPPORTED_SCHEMES
            and self.down_reason(m.uri) is None
            and ((row := rows.get(m.uri)) is None or now - row.time > self.config.probe_interval_s)
        ]
        return rows, (self._renew(stale, rows) if stale else set())

    def _renew(self, stale: Sequence[Machine], rows: dict[str, ProbeRow]) -> set[str]:
        """Ask `stale` for their reports; put the answers in `rows` (this host's slots on them
        still to be counted) and say which those are."""
        from nixdist.state.rows import ProbeRow  # noqa: PLC0415 - see the imports

        renewed: set[str] = set()
        for machine, result in self._probe_all(stale):
            if isinstance(result, NixdistError):
                self.mark_down(machine, str(result))
                continue
            rows[machine.uri] = ProbeRow(
                uri=machine.uri, time=time.time(), local_slots=0, report=result
            )
            renewed.add(machine.uri)
            self.health.answered(machine.uri)
            if result.problem is not None and self.out.wants(Verbosity.TALKATIVE):
                note = f"no full load report from '{machine.uri}': {result.problem}"
                if first_time(self.config.state_dir, note):  # once per Nix run
                    self.out.log(Verbosity.TALKATIVE, note)
        return renewed

    def _store_reports(self, rows: Sequence[ProbeRow]) -> None:
        if not rows:  # the database is not even opened
            return

        def put(db: StateDB) -> None:
            for row in rows:
                db.put_probe(row)

        self.advice(put, None)

    def _probe_all(
        self, machines: Sequence[Machine]
    ) -> list[tuple[Machine, BuilderReport | NixdistError]]:
        from nixdist.transport.openssh import target_for_machine  # noqa: PLC0415
        from nixdist.transport.probe import probe_builder  # noqa: PLC0415 - see the imports

        results: list[tuple[Machine, BuilderReport | NixdistError]] = []

        def probe(machine: Machine) -> None:
            try:
                report = probe_builder(
                    target_for_machine(machine, self.environ), self.masters, self.environ
                )
            except NixdistError as err:
                results.append((machine, err))
            else:
                results.append((machine, report))

        threads = [threading.Thread(target=probe, args=(m,), daemon=True) for m in machines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    # -- choosing ------------------------------------------------------------------------------

    def decide(
        self, request: BuildRequest, *, among: frozenset[str] | None = None
    ) -> tuple[Decision, SlotLease | None]:
        """One round of Nix's selection, under the main lock: the decision and, for an
        accept, the slot it holds (already touched, like Nix does).

        Slots, health and load reports are looked up only for the machines that fit the
        request: for the others the mismatch is the reason, whatever their state, and the main
        lock (which every hook of this host waits for) is held no longer than it must be.
        With `among` (store URIs) only those machines are considered (``nixdist build``
        placing a build on the machine that finishes it first); the others count as busy.
        """
        fits = [
            machine_fits(request, m) and (among is None or m.uri in among) for m in self.machines
        ]
        fitting = [m for m, fit in zip(self.machines, fits, strict=True) if fit]
        reports, renewed = self.refresh_loads(fitting)
        with self.slots.main_lock():
            probes = [
                self.slots.try_slot(m) if fit else None
                for m, fit in zip(self.machines, fits, strict=True)
            ]
            for m, probe in zip(self.machines, probes, strict=True):
                if probe is not None and m.uri in renewed:  # this host's builds there now
                    reports[m.uri] = dataclasses.replace(reports[m.uri], local_slots=probe.load)
            now = time.time()
            states = [
                MachineState(machine=m, load=0, free_slot=False)
                if probe is None
                else machine_state(
                    m,
                    slots_in_use=probe.load,
                    free_slot=probe.free_slot,
                    down_reason=self.down_reason(m.uri),
                    report=reports.get(m.uri),
                    now=now,
                    probe_interval_s=self.config.probe_interval_s,
                )
                for m, probe in zip(self.machines, probes, strict=True)
            ]
            decision = choose(
                request,
                self.local,
                states,
                supported_schemes=SUPPORTED_SCHEMES,
                min_free_disk=self.config.min_free_disk,
            )
            chosen = probes[decision.index] if isinstance(decision, Accept) else None
            kept = None if chosen is None else chosen.lease
            for probe in probes:
                if probe is not None and probe.lease is not None and probe.lease is not kept:
                    probe.lease.release()
            if kept is not None:
                kept.touch()
        self._store_reports([reports[uri] for uri in renewed])
        if self.out.wants(Verbosity.DEBUG) and (rejections := render_rejections(decision)):
            self.out.debug(f"{request.drv_path}: " + "; ".join(rejections))
        return decision, kept

    def pick(self, request: BuildRequest) -> tuple[Picked | Reply, Decision]:
        """Accept a machine (slot held, session open), or the reply to send instead; with the
        decision that led there.

        When every machine that fits is busy, the slots are watched for up to the slot wait
        before answering ``postpone``: Nix would ask again only after its poll interval.
        """
        wait_until = time.monotonic() + self.config.slot_wait_s
        while True:
            decision, kept = self.decide(request)
            match decision:
                case Accept(machine=machine):
                    assert kept is not None  # noqa: S101 - an Accept always has a free slot
                    from nixdist.hook.picked import Picked  # noqa: PLC0415 - see the imports
                    from nixdist.store.remote import open_remote  # noqa: PLC0415
                    from nixdist.transport.openssh import target_for_machine  # noqa: PLC0415

                    try:
                        remote = open_remote(
                            target_for_machine(machine, self.environ), self.masters, self.environ
                        )
                    except (TransportError, ProtocolError) as err:
                        kept.release()
                        self.mark_down(machine, str(err))
                        continue
                    self.health.answered(machine.uri)
                    return Picked(machine=machine, lease=kept, remote=remote), decision
                case Postpone():
                    if _waiting_helps(decision) and time.monotonic() < wait_until:
                        time.sleep(SLOT_POLL_S)
                        continue
                    return Reply.POSTPONE, decision
                case Decline(permanently=permanently, warn=warn):
                    if not permanently:
                        report = render_no_machine_report(
                            request, self.machines, bracketed=self.bracketed_reports
                        )
                        self.out.log(Verbosity.WARN if warn else Verbosity.CHATTY, report)
                    return (Reply.DECLINE_PERMANENTLY if permanently else Reply.DECLINE), decision
                case _:  # pragma: no cover - exhaustiveness
                    assert_never(decision)

    def pick_again(self, request: BuildRequest) -> Picked | None:
        """Another machine for a build whose builder failed after ``# accept``.

        Nix cannot take the build back now, so busy machines are waited for (up to
        `FAILOVER_WAIT_S`); None when no other machine can take it at all. The history gets
        one row per decision, not one per look at the slots.
        """
        retry = dataclasses.replace(request, am_willing=False)
        deadline = time.monotonic() + FAILOVER_WAIT_S
        waiting = False
        while True:
            picked, decision = self.pick(retry)
            if not isinstance(picked, Reply):
                self.record(retry, decision)
                return picked
            if picked is not Reply.POSTPONE or time.monotonic() > deadline:
                self.record(retry, decision)
                return None
            if not waiting:
                self.record(retry, decision)  # the wait starts: said once
                waiting = True
            time.sleep(FAILOVER_POLL_S)

    def record(self, request: BuildRequest, decision: Decision) -> None:
        """Write the decision into the history."""
        uri: str | None = None
        match decision:
            case Accept(machine=machine):
                word, uri = "accept", machine.uri
            case Postpone():
                word = "postpone"
            case Decline(permanently=permanently):
                word = "decline-permanently" if permanently else "decline"
            case _:  # pragma: no cover - exhaustiveness
                assert_never(decision)
        self.history.decision(
            drv_path=request.drv_path,
            system=request.system,
            features=sorted(request.required_features),
            decision=word,
            machine=uri,
            reasons=render_rejections(decision),
        )
