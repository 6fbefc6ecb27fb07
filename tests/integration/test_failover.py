"""Builders failing under real builds: the user's nix-build must still succeed elsewhere.

Each test lists a victim builder first in its machines file (so the scheduler picks it), starts
a real ``nix-build`` with nixdist-hook, waits until the history in the test's own state
directory shows the attempt on the victim in the phase under test, and then kills (SIGKILL of
every process of that builder: sshd, sessions, the build) or freezes (SIGSTOP) it. The build
must land on the other builder, the history must say what happened, and no store may hold a
partial or unregistered path: ``nix-store --verify --check-contents`` locally, and the
victim's database must not list a path it did not finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import StateError
from nixdist.state.db import StateDB
from nixrun import FIXTURES, HANG_GUARD_S, HOOK, fresh_salt, machines_file, nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.farm import Farm
    from nixdist.state.rows import BuildRow

    from .conftest import FarmFixture

pytestmark = pytest.mark.integration

FAILOVER = FIXTURES / "failover.nix"
NIXDIST = Path(sys.executable).with_name("nixdist")
VICTIM, SPARE = "b2", "b1"


def start_build(
    attr: str, env: dict[str, str], machines: Path, *extra: str
) -> subprocess.Popen[str]:
    argv = nix_build_argv([str(FAILOVER), "-A", attr, *extra], builders=f"@{machines}", hook=HOOK)
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def attempts(state: Path) -> list[BuildRow]:
    try:
        with StateDB.open(state) as db:
            return sorted(db.builds(), key=lambda row: row.id)
    except StateError:
        return []  # not created yet


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    """Poll `condition`; a hang guard, not a time limit: fail only if nothing ever happens."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"nix-build ended before the awaited moment:\n{err[-3000:]}")
        assert time.monotonic() < deadline, "nothing happened"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, out, err


def verify_local_store() -> None:
    check = subprocess.run(
        ["nix-store", "--verify", "--check-contents"],
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    assert check.returncode == 0, check.stderr[-3000:]


@pytest.fixture
def setup(local_farm: FarmFixture, tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """Environment (own state dir, short timeouts), machines file [victim, spare], state dir."""
    state = tmp_path / "state"
    env = {
        **local_farm.nix_env(),
        "NIXDIST_STATE_DIR": str(state),
        "NIXDIST_CONNECT_TIMEOUT": "3",
    }
    machines = machines_file(
        local_farm.machines, local_farm.alias, tmp_path / "machines", [VICTIM, SPARE]
    )
    return env, machines, state


def _big_file(path: Path, mib: int) -> Path:
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(1 << 20))
    return path


@pytest.mark.parametrize("scheme", ["ssh", "ssh-ng"])
@pytest.mark.parametrize("phase", ["upload", "build", "download"])
def test_a_builder_killed_mid_build_moves_the_build_to_another(  # noqa: PLR0917 - fixtures
    farm: Farm,
    local_farm: FarmFixture,
    setup: tuple[dict[str, str], Path, Path],
    tmp_path: Path,
    phase: str,
    scheme: str,
) -> None:
    env, machines, state = setup
    if scheme != "ssh":  # the same builders, reached through nix-daemon --stdio
        lines = machines.read_text().splitlines()
        machines.write_text("".join(f"{scheme}://{line[len('ssh://') :]}\n" for line in lines))
    victim_uri = f"{scheme}://{local_farm.alias(VICTIM)}"
    salt = fresh_salt(f"killed-{phase}")
    args = ["--argstr", "salt", salt, "--argstr", "victim", VICTIM]
    attr = {"upload": "bigInput", "build": "stuck", "download": "bigOutput"}[phase]
    if phase == "upload":
        args += ["--arg", "input", str(_big_file(tmp_path / f"input-{salt}", 192))]
    if phase == "download":
        args += ["--argstr", "size", "192"]
    proc = start_build(attr, env, machines, *args)

    def victim_in_phase() -> bool:
        return any(
            row.machine == victim_uri and row.phase == phase and row.status == "running"
            for row in attempts(state)
        )

    wait_until(victim_in_phase, proc)
    farm.freeze(VICTIM)  # stop it where it is, then kill it all at once
    farm.stop(VICTIM)
    code, out, err = finish(proc)
    assert code == 0, err[-4000:]
    [output] = out.split()
    assert Path(output, "id").read_text().split()[-1] == SPARE  # the bytes came from the spare
    # In the download phase the victim had finished building it too.
    built_on = [SPARE, VICTIM] if phase == "download" else [SPARE]
    assert sorted(farm.where_built([output])[output]) == sorted(built_on)

    first, second = attempts(state)
    assert (first.machine, first.status, first.phase) == (victim_uri, "lost", phase)
    assert first.error
    assert (second.machine, second.status, second.attempt) == (
        f"{scheme}://{local_farm.alias(SPARE)}",
        "built",
        2,
    )
    assert f"'{victim_uri}' failed during {phase}" in err

    verify_local_store()


def test_a_builder_frozen_mid_build_is_given_up_after_the_keepalive_timeout(
    farm: Farm, local_farm: FarmFixture, setup: tuple[dict[str, str], Path, Path]
) -> None:
    env, machines, state = setup
    victim_uri = f"ssh://{local_farm.alias(VICTIM)}"
    salt = fresh_salt("frozen")
    proc = start_build(
        "stuck", env, machines, "--argstr", "salt", salt, "--argstr", "victim", VICTIM
    )

    def victim_building() -> bool:
        return any(
            row.machine == victim_uri and row.phase == "build" and row.status == "running"
            for row in attempts(state)
        )

    wait_until(victim_building, proc)
    farm.freeze(VICTIM)
    frozen_at = time.time()
    try:
        code, out, err = finish(proc)
    finally:
        farm.thaw(VICTIM)
    assert code == 0, err[-4000:]
    [output] = out.split()
    assert farm.where_built([output])[output] == [SPARE]
    first, second = attempts(state)
    assert (first.machine, first.status, first.phase) == (victim_uri, "lost", "build")
    assert second.status == "built"
    # Reported, not asserted (machines are shared and noisy): how long the frozen builder held us.
    assert first.finished is not None
    sys.stderr.write(f"frozen builder given up after {first.finished - frozen_at:.1f} s\n")


def test_a_down_builder_is_skipped_without_connecting_until_its_backoff_ends(
    farm: Farm, local_farm: FarmFixture, setup: tuple[dict[str, str], Path, Path]
) -> None:
    env, machines, _ = setup
    victim_uri = f"ssh://{local_farm.alias(VICTIM)}"
    farm.stop(VICTIM)
    first = start_build("stuck", env, machines, "--argstr", "salt", fresh_salt("down-1"))
    code, _, err = finish(first)
    assert code == 0, err[-4000:]
    assert f"cannot use '{victim_uri}'" in err

    farm.start(VICTIM)  # it is back, but its back-off (30 s) is not over
    log = farm.sshd_log(VICTIM)
    before = log.read_text() if log.exists() else ""
    later = [
        start_build("stuck", env, machines, "--argstr", "salt", fresh_salt(f"down-{i}"))
        for i in range(3)
    ]
    for proc in later:
        code, out, err = finish(proc)
        assert code == 0, err[-4000:]
        [output] = out.split()
        assert farm.where_built([output])[output] == [SPARE]
        assert f"cannot use '{victim_uri}'" not in err
    after = log.read_text() if log.exists() else ""
    assert after[len(before) :].count("Accepted") == 0, after[len(before) :]

    shown = subprocess.run(
        [str(NIXDIST), "status", "--json", "--machines", str(machines)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    status = {m["uri"]: m for m in json.loads(shown.stdout)["machines"]}
    down = status[victim_uri]
    assert down["up"] is False
    assert down["down"]["failures"] == 1
    assert down["down"]["retry_in"] > 0
    assert "cannot connect" in down["down"]["reason"] or "closed" in down["down"]["reason"]
    assert status[f"ssh://{local_farm.alias(SPARE)}"]["up"] is True

    table = subprocess.run(
        [str(NIXDIST), "status", "--machines", str(machines)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "down:" in table.stdout
