"""The hook's main loop: settings, then ``try`` after ``try`` until one is accepted.

One hook process answers ``try`` requests until it accepts one; then it belongs to that
derivation, builds it remotely (`nixdist.hook.build`) and exits with the status Nix expects
(nix-protocols.md §1.2-§1.8)::

    settings ─▶ machines ─▶ ┌ try ─▶ probe slots (flock) ─▶ choose() ─▶ postpone | decline ┐
                            └─────────────────────────────────────────────────────────────┘
                                                  └─▶ accept: open ssh session ─▶ build

A builder that cannot be reached is marked down for the rest of this process and the choice
is made again without it, as build-remote does.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, assert_never

from nixdist.errors import (
    ConfigError,
    NixdistError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)
from nixdist.hook.build import build_remotely
from nixdist.hook.nixinput import NixInput
from nixdist.hook.output import HookOutput
from nixdist.protocol.hook import (
    HookExit,
    HookSettings,
    Reply,
    TryRequest,
    decode_accepted_work,
    decode_hook_command,
    decode_settings,
    parse_hook_verbosity,
)
from nixdist.protocol.logjson import Verbosity
from nixdist.scheduler.policy import (
    Accept,
    BuildRequest,
    Decision,
    Decline,
    LocalCapabilities,
    Postpone,
    choose,
    render_no_machine_report,
    render_rejections,
)
from nixdist.state.config import load_machines
from nixdist.state.health import Health, backoff
from nixdist.state.once import first_time
from nixdist.state.paths import state_dir
from nixdist.state.slots import SlotDirectory
from nixdist.store.serve import ServeStore
from nixdist.transport.openssh import (
    DEFAULT_CONNECT_TIMEOUT_S,
    ControlMasters,
    target_for_machine,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.model.machines import Machine
    from nixdist.state.slots import SlotLease

#: Store URI schemes nixdist can open; other machines are skipped with a warning.
SUPPORTED_SCHEMES: Final = frozenset({"ssh"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Picked:
    """An accepted machine: the slot we hold on it and the open session."""

    machine: Machine
    lease: SlotLease
    remote: ServeStore


def connect_timeout(environ: Mapping[str, str]) -> float:
    """``NIXDIST_CONNECT_TIMEOUT``: seconds a builder may take to answer (default 15)."""
    text = environ.get("NIXDIST_CONNECT_TIMEOUT")
    if text is None:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise ConfigError(
            f"{text!r} is not a positive number of seconds", file="NIXDIST_CONNECT_TIMEOUT"
        )
    return value


class MachinePicker:
    """Answers ``try`` requests: Nix's selection rules, with the reasons kept."""

    def __init__(
        self,
        machines: Sequence[Machine],
        settings: HookSettings,
        environ: Mapping[str, str],
        out: HookOutput,
    ) -> None:
        self.machines = tuple(machines)
        self.environ = environ
        self.out = out
        self.local = LocalCapabilities(
            system=settings.system,
            extra_platforms=settings.extra_platforms,
            system_features=settings.system_features,
            max_jobs=settings.max_jobs,
        )
        self.slots = SlotDirectory.default(environ=environ)
        self.slots.ensure()
        self.masters = ControlMasters(
            state_dir(environ), connect_timeout_s=connect_timeout(environ)
        )
        self.health = Health(state_dir(environ))
        self.down: dict[str, str] = {}  # failed in this process: not retried here at all

    def down_reason(self, uri: str) -> str | None:
        """Why `uri` is skipped now: it failed in this process, or recently in another."""
        if uri in self.down:
            return self.down[uri]
        record = self.health.down(uri)
        return None if record is None else record.describe(time.time())

    def decide(self, request: BuildRequest) -> tuple[Decision, SlotLease | None]:
        """One round of Nix's selection, under the main lock: the decision and, for an
        accept, the slot it holds (already touched, like Nix does)."""
        with self.slots.main_lock():
            probes = [self.slots.probe(machine) for machine in self.machines]
            states = [
                probe.machine_state(down_reason=self.down_reason(probe.machine.uri))
                for probe in probes
            ]
            decision = choose(request, self.local, states, supported_schemes=SUPPORTED_SCHEMES)
            kept = probes[decision.index].lease if isinstance(decision, Accept) else None
            for probe in probes:
                if probe.lease is not None and probe.lease is not kept:
                    probe.lease.release()
            if kept is not None:
                kept.touch()
        if rejections := render_rejections(decision):
            self.out.debug(f"{request.drv_path}: " + "; ".join(rejections))
        return decision, kept

    def pick(self, request: BuildRequest) -> Picked | Reply:
        """Accept a machine (slot held, session open), or the reply to send instead."""
        while True:
            decision, kept = self.decide(request)
            match decision:
                case Accept(machine=machine):
                    assert kept is not None  # noqa: S101 - an Accept always has a free slot
                    try:
                        remote = ServeStore.open_ssh(
                            target_for_machine(machine, self.environ), self.masters, self.environ
                        )
                    except (TransportError, ProtocolError) as err:
                        kept.release()
                        self.down[machine.uri] = str(err)
                        record = self.health.failed(machine.uri, str(err))
                        self.out.error(
                            f"cannot build on '{machine.uri}': {err}; "
                            f"skipping it for {backoff(record.failures):g} s"
                        )
                        continue
                    self.health.answered(machine.uri)
                    return Picked(machine=machine, lease=kept, remote=remote)
                case Postpone():
                    return Reply.POSTPONE
                case Decline(permanently=permanently, warn=warn):
                    if not permanently:
                        report = render_no_machine_report(request, self.machines)
                        self.out.log(Verbosity.WARN if warn else Verbosity.CHATTY, report)
                    return Reply.DECLINE_PERMANENTLY if permanently else Reply.DECLINE
                case _:  # pragma: no cover - exhaustiveness
                    assert_never(decision)


def run(argv: Sequence[str], environ: Mapping[str, str], out: HookOutput) -> int:
    out.verbosity = parse_hook_verbosity(argv)
    nix = NixInput(0)
    raw_settings = nix.recv(decode_settings)
    if raw_settings is None:
        return HookExit.OK
    settings = HookSettings.parse(raw_settings)
    machines = load_machines(settings.builders, environ, default_system=settings.system)
    for machine in machines:
        if machine.scheme not in SUPPORTED_SCHEMES:
            warning = (
                f"{machine.source}: skipping builder '{machine.uri}': "
                "nixdist speaks only ssh:// stores so far"
            )
            if first_time(state_dir(environ), warning):  # once per Nix run, not per build
                out.warn(warning)
    if not machines:
        out.reply(Reply.DECLINE_PERMANENTLY)
        return HookExit.OK
    picker = MachinePicker(machines, settings, environ, out)
    while True:
        command = nix.recv(decode_hook_command)
        if not isinstance(command, TryRequest):
            return HookExit.OK  # EOF or another word: Nix is done with us
        request = BuildRequest(
            drv_path=command.drv_path,
            system=command.system,
            required_features=command.required_features,
            am_willing=command.am_willing,
        )
        picked = picker.pick(request)
        if isinstance(picked, Reply):
            out.reply(picked)
            continue
        out.reply(Reply.ACCEPT, picked.machine.uri)
        work = nix.recv(decode_accepted_work)
        if work is None:
            raise RemoteProtocolError("Nix closed the hook's stdin instead of sending the inputs")
        return build_remotely(
            request=command,
            work=work,
            settings=settings,
            machine=picked.machine,
            remote=picked.remote,
            slots=picker.slots,
            out=out,
            environ=environ,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nixdist-hook`` (and ``nixdist hook``): ``[program, …, verbosity]``."""
    out = HookOutput(2)
    try:
        return run(sys.argv if argv is None else argv, os.environ, out)
    except NixdistError as err:
        out.error(str(err))
    except Exception as err:  # noqa: BLE001 - the process edge: Nix must see why, not a traceback
        out.error(f"nixdist-hook: internal error: {type(err).__name__}: {err}")
    return HookExit.FAILED
