"""The hook's main loop: settings, then ``try`` after ``try`` until one is accepted.

One hook process answers ``try`` requests until it accepts one; then it belongs to that
derivation, builds it remotely (`nixdist.hook.build`) and exits with the status Nix expects
(nix-protocols.md §1.2-§1.8)::

    settings ─▶ machines ─▶ ┌ try ─▶ load probes ─▶ slots ─▶ choose() ─▶ postpone | decline ┐
                            └─────────────────────────────────────────────────────────────┘
                                            └─▶ accept: open ssh session ─▶ build

Choosing is `nixdist.hook.picker.MachinePicker`'s; building, after ``# accept``, is
`nixdist.hook.build`'s, loaded only then. Both get what they need from here and call nothing
back: the data of one build flows down, main → picker, main → build → picker.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from nixdist.errors import (
    ConfigError,
    NixdistError,
    RemoteProtocolError,
)
from nixdist.hook.nixinput import NixInput
from nixdist.hook.output import HookOutput
from nixdist.hook.picker import SUPPORTED_SCHEMES, MachinePicker
from nixdist.model.local_store import parse_local_store
from nixdist.model.request import BuildRequest
from nixdist.protocol.hook import (
    HookExit,
    HookSettings,
    Reply,
    decode_accepted_work,
    decode_hook_command,
    decode_settings,
    parse_hook_verbosity,
)
from nixdist.settings import load_settings
from nixdist.state.config import load_machines
from nixdist.state.once import first_time

# Imported where first needed, not here: the state database (sqlite3), ssh, the serve
# protocol and the build. Nix waits for the hook's first reply with its whole build loop, so
# a decline must not pay for what only an accept uses (``make bench``, W4).

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from nixdist.model.local_store import LocalStore
    from nixdist.model.machines import Machine


def _warn_unsupported(machines: Sequence[Machine], state: Path, out: HookOutput) -> None:
    for machine in machines:
        if machine.scheme not in SUPPORTED_SCHEMES:
            warning = (
                f"{machine.source}: skipping builder '{machine.uri}': "
                f"nixdist cannot build on {machine.scheme}:// stores"
            )
            if first_time(state, warning):  # once per Nix run, not per build
                out.warn(warning)


def run(argv: Sequence[str], environ: Mapping[str, str], out: HookOutput) -> int:
    out.verbosity = parse_hook_verbosity(argv)
    nix = NixInput(0)
    raw_settings = nix.recv(decode_settings)
    if raw_settings is None:
        return HookExit.OK
    settings = HookSettings.parse(raw_settings)
    try:
        store = parse_local_store(settings.store)
    except ConfigError as err:
        out.warn(f"nixdist cannot build remotely for this store: {err}")
        out.reply(Reply.DECLINE_PERMANENTLY)
        return HookExit.OK
    config = load_settings(environ)  # once per hook process: everything below gets it
    machines = load_machines(settings.builders, environ, default_system=settings.system)
    _warn_unsupported(machines, config.state_dir, out)
    if not machines:
        out.reply(Reply.DECLINE_PERMANENTLY)
        return HookExit.OK
    picker = MachinePicker(machines, settings, config, environ, out)
    try:
        return _answer(nix, picker, settings=settings, store=store, environ=environ, out=out)
    finally:
        picker.close()


def _answer(
    nix: NixInput,
    picker: MachinePicker,
    *,
    settings: HookSettings,
    store: LocalStore,
    environ: Mapping[str, str],
    out: HookOutput,
) -> int:
    """Answer Nix's ``try`` requests until one is accepted (then build it) or Nix is done."""
    while True:
        request = nix.recv(decode_hook_command)
        if not isinstance(request, BuildRequest):
            return HookExit.OK  # EOF or another word: Nix is done with us
        picked, decision = picker.pick(request)
        if isinstance(picked, Reply):
            out.reply(picked)
            picker.record(request, decision)
            continue
        out.reply(Reply.ACCEPT, picked.machine.uri)
        picker.record(request, decision)
        work = nix.recv(decode_accepted_work)
        if work is None:
            raise RemoteProtocolError("Nix closed the hook's stdin instead of sending the inputs")
        from nixdist.hook.build import build_remotely  # noqa: PLC0415 - see the imports

        return build_remotely(
            request=request,
            work=work,
            settings=settings,
            store=store,
            first=picked,
            picker=picker,
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
