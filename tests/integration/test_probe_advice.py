"""The load report is advice, never a verdict: builders whose probe tells little still build.

A builder whose /proc hides its load files (what a Linux-only probe meets on macOS or a BSD)
and a fresh builder whose /nix/store does not exist yet (``df`` prints nothing) must take
builds exactly as with Nix's own hook; the gap in their report is said once at ``-v`` and
shown by ``nixdist status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nixdist.farm.spec import make_spec
from nixrun import HANG_GUARD_S, HOOKTEST, fresh_salt, machines_file, nix_build

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nixdist.farm import Farm
    from nixdist.farm.spec import BuilderSpec

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")


@pytest.fixture(scope="module")
def pfarm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Iterator[Farm]:
    farm = farm_factory(
        (make_spec("noproc"), make_spec("nostore"), make_spec("noproc34", nix="2.34"))
    )
    yield farm
    farm.down()


def _env(farm: Farm, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **farm.env(), "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    env.pop("NIX_REMOTE_SYSTEMS", None)
    return env


def _nixdist_json(env: dict[str, str], *args: str) -> Any:
    """``nixdist ARGS --json``, parsed (its exit status is the caller's to judge)."""
    done = subprocess.run(
        [str(NIXDIST), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["noproc", "noproc34", "nostore"])
def test_a_builder_that_tells_little_still_builds(pfarm: Farm, tmp_path: Path, name: str) -> None:
    pfarm.heal()
    if name.startswith("noproc"):
        pfarm.hide_proc(name, hidden=True)
    else:
        pfarm.run_in(name, ["rm", "-rf", "/nix/store"])
    env = _env(pfarm, tmp_path)
    machines = machines_file(pfarm.machines_file, pfarm.alias, tmp_path / "machines", [name])
    salt = fresh_salt(name)
    done = nix_build(
        [str(HOOKTEST), "-A", "plain", "--argstr", "salt", salt, "-v"], env, builders=f"@{machines}"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert pfarm.where_built([out]) == {out: [name]}
    uri = f"ssh://{pfarm.alias(name)}"
    said = [line for line in done.stderr.splitlines() if "no full load report" in line]
    assert len(said) == 1, done.stderr[-4000:]
    assert uri in said[0]
    status = _nixdist_json(env, "status", "--machines", str(machines))
    [machine] = [m for m in status["machines"] if m["uri"] == uri]
    assert machine["up"]
    probe = machine["probe"]
    assert isinstance(probe, dict)
    if name.startswith("noproc"):
        assert (probe["load1"], probe["mem_available"]) == (None, None)
        assert probe["disk_free"] is not None
        assert probe["problem"] == "it did not tell its load, free memory"
    else:
        assert probe["disk_free"] is None
        assert probe["problem"] == "it did not tell its free disk"
    pfarm.heal()


def test_check_says_what_the_load_probe_cannot_see(pfarm: Farm, tmp_path: Path) -> None:
    pfarm.heal()
    pfarm.hide_proc("noproc", hidden=True)
    machines = machines_file(pfarm.machines_file, pfarm.alias, tmp_path / "machines", ["noproc"])
    [builder] = _nixdist_json(_env(pfarm, tmp_path), "check", "--machines", str(machines))[
        "builders"
    ]
    assert builder["usable"], builder
    [load] = [f for f in builder["findings"] if f["check"] == "load report"]
    assert (load["status"], load["message"]) == (
        "warn",
        "no full load report (Linux): it did not tell its load, free memory",
    )
    pfarm.heal()
