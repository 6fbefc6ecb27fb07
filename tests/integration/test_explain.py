"""`nixdist explain` on real derivations against the session farm's machines file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from nixrun import HOOKTEST, fresh_salt

if TYPE_CHECKING:
    from .conftest import FarmFixture

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")


def explain(local_farm: FarmFixture, tmp_path: Path, attr: str) -> dict[str, Any]:
    drv = subprocess.run(
        ["nix-instantiate", str(HOOKTEST), "-A", attr, "--argstr", "salt", fresh_salt(attr)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {**local_farm.nix_env(), "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [str(NIXDIST), "explain", drv, "--machines", str(local_farm.machines), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return cast("dict[str, Any]", json.loads(done.stdout))


def verdicts(local_farm: FarmFixture, result: dict[str, Any]) -> dict[str, str]:
    names = {f"ssh://{local_farm.alias(n)}": n for n in ("b1", "b2", "b3", "b4")}
    return {names[m["uri"]]: m["verdict"] for m in result["machines"]}


def test_a_feature_nobody_has(local_farm: FarmFixture, tmp_path: Path) -> None:
    result = explain(local_farm, tmp_path, "kvm")
    assert result["chosen"] is None
    assert result["decision"].startswith("decline")
    assert set(verdicts(local_farm, result).values()) == {"missing_features"}
    assert all("lacks feature kvm" in m["detail"] for m in result["machines"])


def test_a_mandatory_feature(local_farm: FarmFixture, tmp_path: Path) -> None:
    result = explain(local_farm, tmp_path, "benchmark")
    assert verdicts(local_farm, result) == {
        "b1": "missing_features",
        "b2": "missing_features",
        "b3": "missing_features",
        "b4": "chosen",
    }


def test_a_build_that_goes_remote(local_farm: FarmFixture, tmp_path: Path) -> None:
    result = explain(local_farm, tmp_path, "plain")
    found = verdicts(local_farm, result)
    assert found["b4"] == "mandatory_not_required"
    assert result["chosen"] == f"ssh://{local_farm.alias('b1')}"  # idle, listed first
    assert found["b2"] == found["b3"] == "outranked"
    assert result["decision"].startswith("accept")
