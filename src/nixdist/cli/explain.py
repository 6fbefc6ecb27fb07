"""`nixdist explain DRV` (or ``--system S --features a,b``): why a build goes where it goes.

Every machine's verdict with its reason — wrong system, missing feature, mandatory feature not
required, down since …, low disk, all slots busy, outranked — and the machine that would be
chosen, computed by the same `nixdist.scheduler.policy.choose` the hook calls, from the same
facts: the machines file (``--machines FILE``, default: what Nix reads), this host's Nix
settings (``system``, ``extra-platforms``, ``system-features``, ``max-jobs``), the slots held now
in Nix's ``current-load`` directory, builder health and the last load reports from the state
database. Nothing is locked or connected to, so the answer is what a hook would decide now,
unless a builder's state changes first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.text import Text

from nixdist.cli.machines import effective_machines
from nixdist.cli.status import console, open_db
from nixdist.errors import ConfigError
from nixdist.hook.picker import SUPPORTED_SCHEMES
from nixdist.model.derivation import parse_derivation, required_system_features
from nixdist.model.request import BuildRequest
from nixdist.scheduler.policy import (
    Accept,
    LocalCapabilities,
    Postpone,
    choose,
    could_build_locally,
    render_decision,
)
from nixdist.settings import load_settings
from nixdist.state.config import nix_settings_here, read_config_file
from nixdist.state.report import status_report
from nixdist.state.slots import SlotDirectory
from nixdist.state.view import machine_state

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.model.machines import Machine
    from nixdist.scheduler.policy import Decision, MachineState
    from nixdist.settings import Settings


def _request(drv: str | None, system: str | None, features: str) -> BuildRequest:
    if drv is not None:
        text = read_config_file(drv)
        if text is None:
            raise ConfigError("no such file", file=drv)
        parsed = parse_derivation(text)
        return BuildRequest(
            drv_path=drv,
            system=parsed.platform,
            required_features=required_system_features(parsed),
            am_willing=True,
        )
    if system is None:
        raise click.UsageError("give a derivation, or --system (and --features)")
    wanted = frozenset(word for word in features.replace(",", " ").split() if word)
    return BuildRequest(
        drv_path="<--system>", system=system, required_features=wanted, am_willing=True
    )


def _local_capabilities(env: Mapping[str, str]) -> LocalCapabilities:
    """This host's capabilities, from its nix.conf, as Nix would send them to the hook."""
    _, nix = nix_settings_here(env)
    return LocalCapabilities(
        system=nix.system,
        extra_platforms=nix.extra_platforms,
        system_features=nix.system_features,
        max_jobs=nix.max_jobs,
    )


def _states(
    machines: Sequence[Machine], env: Mapping[str, str], settings: Settings
) -> list[MachineState]:
    """What the hook would see of each machine now (`nixdist.state.view`)."""
    db = open_db()
    try:
        report = status_report(machines, db, SlotDirectory.default(environ=env), recent=0)
    finally:
        if db is not None:
            db.close()
    return [
        machine_state(
            m.machine,
            slots_in_use=m.slots_in_use,
            free_slot=m.slots_in_use < m.machine.max_jobs,
            down_reason=None if m.down is None else m.down.describe(report.time),
            report=m.probe,
            now=report.time,
            probe_interval_s=settings.probe_interval_s,
        )
        for m in report.machines
    ]


@click.command()
@click.argument("drv", required=False)
@click.option("--system", help="Explain a build for this system instead of a derivation.")
@click.option("--features", default="", help="Required system features (comma-separated).")
@click.option("--machines", "machines_file", metavar="FILE", help="Machines file (default: Nix's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def explain(
    drv: str | None, system: str | None, features: str, machines_file: str | None, as_json: bool
) -> None:
    """Say which builder would take a build, and why every other one would not."""
    env = os.environ
    local = _local_capabilities(env)
    request = dataclasses.replace(_request(drv, system, features), am_willing=local.max_jobs > 0)
    machines, origin = effective_machines(env, machines_file)
    settings = load_settings(env)
    decision = choose(
        request,
        local,
        _states(machines, env, settings),
        supported_schemes=SUPPORTED_SCHEMES,
        min_free_disk=settings.min_free_disk,
    )
    if as_json:
        click.echo(json.dumps(_as_json(request, machines, decision), indent=2))
    else:
        _show(request, local, machines, origin, decision)


def _as_json(
    request: BuildRequest, machines: Sequence[Machine], decision: Decision
) -> dict[str, object]:
    verdicts = {r.machine.uri: (r.reason.value, r.detail) for r in decision.reasons}
    chosen = decision.machine.uri if isinstance(decision, Accept) else None
    return {
        "derivation": request.drv_path,
        "system": request.system,
        "required_features": sorted(request.required_features),
        "decision": render_decision(decision),
        "chosen": chosen,
        "machines": [
            {
                "uri": m.uri,
                "verdict": "chosen" if m.uri == chosen else verdicts[m.uri][0],
                "detail": "" if m.uri == chosen else verdicts[m.uri][1],
            }
            for m in machines
        ],
    }


def _show(
    request: BuildRequest,
    local: LocalCapabilities,
    machines: Sequence[Machine],
    origin: str,
    decision: Decision,
) -> None:
    verdicts = {r.machine.uri: r.detail for r in decision.reasons}
    chosen = decision.machine.uri if isinstance(decision, Accept) else None
    out = console()
    features_text = ", ".join(sorted(request.required_features)) or "none"
    name = Path(request.drv_path).name
    out.print(Text(f"{name}: system {request.system}, features {features_text}"))
    out.print(Text(f"machines: {origin}"))
    for m in machines:
        if m.uri == chosen:
            out.print(Text(f"  ✔ {m.uri}: chosen", style="green"))
        else:
            out.print(Text(f"  ✘ {m.uri}: {verdicts[m.uri]}"))
    verdict = render_decision(decision)
    if isinstance(decision, Postpone):
        verdict += " (Nix asks again when a slot frees up)"
    elif not isinstance(decision, Accept):
        if could_build_locally(request, local):
            verdict += "; Nix builds it locally"
        else:
            verdict += "; this host cannot build it either, so Nix fails"
    out.print(Text(verdict, style="bold"))
