"""``nixdist explain`` says what the hook would do: both fed the same facts, one answer.

The facts are real files: a machines file, slot locks in a ``current-load`` directory (one
held, as another build would), and a state database with a builder marked down and fresh load
reports (one builder short of disk, one busy with other clients' builds). The hook's
`MachinePicker.decide` and ``nixdist explain --json`` then judge the same request.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from click.testing import CliRunner

from nixdist.cli.explain import explain
from nixdist.hook.output import HookOutput
from nixdist.hook.picker import MachinePicker
from nixdist.model.machines import parse_machines
from nixdist.model.request import BuildRequest
from nixdist.protocol.hook import HookSettings
from nixdist.scheduler.policy import Accept
from nixdist.settings import load_settings
from nixdist.state.db import StateDB
from nixdist.state.rows import Down, ProbeRow
from nixdist.state.slots import SlotDirectory
from nixdist.transport.probe import BuilderReport

if TYPE_CHECKING:
    from pathlib import Path

MACHINES = """\
ssh://held x86_64-linux - 1 4
ssh://down x86_64-linux - 2 4
ssh://full x86_64-linux - 2 4
ssh://busy x86_64-linux - 4 2
ssh://idle x86_64-linux - 4 1
ssh://arm aarch64-linux - 4 8
"""


def _facts(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "machines").write_text(MACHINES)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "nix.conf").write_text("system = x86_64-linux\nmax-jobs = 0\n")
    now = time.time()
    with StateDB.open(tmp_path / "state") as db:
        db.put_health(
            Down(uri="ssh://down", reason="refused", failures=1, since=now, until=now + 60)
        )
        for uri, report in (
            ("ssh://full", BuilderReport(running_builds=0, disk_free=1 << 20, disk_total=1 << 30)),
            ("ssh://busy", BuilderReport(running_builds=3, load1=3.0, cores=4, disk_free=1 << 40)),
            ("ssh://idle", BuilderReport(running_builds=0, load1=0.1, cores=4, disk_free=1 << 40)),
        ):
            db.put_probe(ProbeRow(uri=uri, time=now, local_slots=0, report=report))
    return {
        **os.environ,
        "NIXDIST_STATE_DIR": str(tmp_path / "state"),
        "NIX_CURRENT_LOAD": str(tmp_path / "current-load"),
        "NIX_CONF_DIR": str(tmp_path / "conf"),
        "NIXDIST_CONFIG": "",
        "NIX_REMOTE_SYSTEMS": "",
    }


def test_explain_and_the_hook_choose_alike(tmp_path: Path) -> None:
    env = _facts(tmp_path)
    machines = parse_machines(
        MACHINES, read_file=lambda _path: "", default_system="x86_64-linux", source="machines"
    )
    slots = SlotDirectory.default(environ=env)
    slots.ensure()
    held = slots.try_slot(machines[0]).lease  # another build has the only slot of ssh://held
    assert held is not None
    request = BuildRequest(drv_path="/nix/store/x.drv", system="x86_64-linux", am_willing=False)
    with open(os.devnull, "w") as devnull:  # noqa: PTH123 - a descriptor for HookOutput
        picker = MachinePicker(
            machines,
            HookSettings(system="x86_64-linux", max_jobs=0),
            load_settings(env),
            env,
            HookOutput(devnull.fileno()),
        )
        try:
            decision, lease = picker.decide(request)
        finally:
            picker.close()
    if lease is not None:
        lease.release()
    ran = CliRunner().invoke(
        explain,
        ["--json", "--system", "x86_64-linux", "--machines", str(tmp_path / "machines")],
        env=env,
    )
    held.release()
    assert ran.exit_code == 0, ran.output
    said = json.loads(ran.output)
    assert isinstance(decision, Accept)
    assert said["chosen"] == decision.machine.uri == "ssh://idle"
    hook_verdicts = {r.machine.uri: r.reason.value for r in decision.reasons}
    explain_verdicts = {
        m["uri"]: m["verdict"] for m in said["machines"] if m["verdict"] != "chosen"
    }
    assert explain_verdicts == hook_verdicts
    assert set(hook_verdicts) == {
        "ssh://held",
        "ssh://down",
        "ssh://full",
        "ssh://busy",
        "ssh://arm",
    }


def test_a_renewed_report_counts_this_hosts_slots_once_under_the_main_lock(
    tmp_path: Path,
) -> None:
    """ssh://localhost runs the probe here, without ssh: its report is renewed in the try, and
    stored with the slots this host held on it when the choice was made."""
    env = _facts(tmp_path)
    [local] = parse_machines(
        "ssh://localhost x86_64-linux - 3 1\n",
        read_file=lambda _path: "",
        default_system="x86_64-linux",
        source="machines",
    )
    slots = SlotDirectory.default(environ=env)
    slots.ensure()
    held = slots.try_slot(local).lease
    assert held is not None
    request = BuildRequest(drv_path="/nix/store/x.drv", system="x86_64-linux", am_willing=False)
    with open(os.devnull, "w") as devnull:  # noqa: PTH123 - a descriptor for HookOutput
        picker = MachinePicker(
            [local],
            HookSettings(system="x86_64-linux", max_jobs=0),
            load_settings(env),
            env,
            HookOutput(devnull.fileno()),
        )
        try:
            decision, lease = picker.decide(request)
        finally:
            picker.close()
    assert isinstance(decision, Accept)
    assert lease is not None
    lease.release()
    held.release()
    with StateDB.open(tmp_path / "state") as db:
        row = db.probe("ssh://localhost")
    assert row is not None
    assert row.local_slots == 1
    assert row.report.known
