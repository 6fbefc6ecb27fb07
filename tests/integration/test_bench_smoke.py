"""A smoke run of the benchmark harness (bench/run.py, W1 and W6) on a real farm: correctness only.

The benchmark itself is never a pass/fail test on time. This runs W1 small (a DAG of 2 layers
x 10 trivial derivations, every contender, one round) through the very code `make bench` runs,
and checks what the numbers rest on: every build succeeded, every output is valid locally and
was built by exactly one farm builder (read from the builders' own stores; the local floor's
by none), and the results JSON has the shape bench/README.md describes; once with the host's
Nix as the client, once as a Nix 2.34 farm client (``--client-nix 2.34``: its own hook is ``nix
__build-remote``), once over ``ssh-ng://`` (these two without nixdist build). W6 runs small too:
the hooks bring every output here and relay nothing, nixdist build brings only the top and
relays the rest builder to builder. Also: a farm builder's /etc/nix/nixdist-speed, which W3
scales its work by, holds its speed factor.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nixdist.farm import make_spec
from nixdist.farm.rootfs import ensure_rootfs_info

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.farm import BuilderSpec, Farm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run.py"
# A guard against a hang, never a performance limit.
HANG_GUARD_S = 900
WIDTH, LAYERS = 10, 2
CONTENDERS = ["build-remote", "local", "nixdist", "nixdist-build", "nixdist-build-all"]


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """bench/run.py with `args`; its results JSON and stdout (it must exit 0)."""
    results = tmp_path / "bench.json"
    argv = [sys.executable, str(RUN), *args, "--rounds", "1", "--json", str(results)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=HANG_GUARD_S, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(results.read_text())
    assert data["failures"] == []
    assert data["interrupted"] is False
    return data, proc.stdout


@pytest.mark.usefixtures("require_farm")
@pytest.mark.parametrize(
    ("workload", "client_nix"),
    [("w1", None), ("w1", "2.34"), ("w1-ng", None)],
    ids=["host", "client-2.34", "ssh-ng"],
)
def test_w1_smoke_builds_everything_remotely(
    tmp_path: Path, workload: str, client_nix: str | None
) -> None:
    args = ["--only", workload, "--w1-width", str(WIDTH), "--w1-layers", str(LAYERS)]
    if client_nix is not None:
        nix_version = ensure_rootfs_info(client_nix).nix_version
        args += ["--client-nix", client_nix]
    data, stdout = run_bench(tmp_path, *args)
    assert set(data["machine"]) >= {"date", "cores", "nix", "python"}
    assert data["client_nix"] == client_nix
    if client_nix is not None:
        assert data["machine"]["client"]["nix"] == nix_version
        assert data["machine"]["client"]["build_remote"] == "/usr/bin/nix __build-remote"
        assert f"build-remote {client_nix}" in stdout  # the table's column
    w1 = data["workloads"][workload]
    n = WIDTH * LAYERS
    assert w1["derivations"] == n
    runs = w1["runs"]
    # every contender, nixdist build too, with any client and either scheme
    assert sorted(r["contender"] for r in runs) == CONTENDERS
    for run in runs:
        assert run["ok"], run["error"]
        assert (run["derivations"], run["outputs"], run["valid_locally"]) == (n, n, n)
        assert run["asked"] == run["asked_valid"] == n  # the expression lists every drv
        remote = 0 if run["contender"] == "local" else n
        assert run["built_remotely"] == sum(run["placements"].values()) == remote
        assert set(run["placements"]) <= {"b1", "b2", "b3"}
        assert run["seconds"] > 0
    for contender in CONTENDERS:
        assert len(w1["seconds"][contender]) == 1
        assert math.isfinite(w1["median_s"][contender])
    hook, build, floor = data["goals"]
    label = "W1" if workload == "w1" else "W1 ssh-ng"
    assert {goal["workload"] for goal in data["goals"]} == {label}
    assert (hook["goal"], build["goal"], floor["goal"]) == ("<= 0.35x", "<= 0.15x", "<= 1.5x")
    assert isinstance(hook["met"], bool)
    assert all(isinstance(g["met"], bool) for g in (build, floor))
    assert label in stdout  # the table was printed


@pytest.mark.usefixtures("require_farm")
def test_w6_smoke_relays_without_the_local_store(tmp_path: Path) -> None:
    args = ["--only", "w6", "--w6-width", "2", "--w6-depth", "2", "--w6-kib", "64"]
    data, stdout = run_bench(tmp_path, *args)
    w6 = data["workloads"]["w6"]
    runs = {r["contender"]: r for r in w6["runs"]}
    assert sorted(runs) == ["build-remote", "nixdist", "nixdist-build"]
    outputs = 2 * 2 + 2  # the layers, stuck and top
    for run in runs.values():
        assert run["ok"], run["error"]
        assert run["outputs"] == run["built_remotely"] == outputs
        assert set(run["placements"]) <= {"fa1", "fa2", "fb1", "fb2"}
        assert run["asked"] == run["asked_valid"] == 1
        moved = run["traffic"]
        assert moved["copies"] > 0  # every layer needs the one before on other builders
        assert moved["asked"] > 64 * 1024
        assert moved["sources"] == 0
    for hook in ("build-remote", "nixdist"):
        moved = runs[hook]["traffic"]
        assert runs[hook]["valid_locally"] == outputs
        assert moved["relayed"] == 0
        assert moved["received"] > outputs * 64 * 1024
        assert moved["sent"] > 0
    moved = runs["nixdist-build"]["traffic"]
    assert runs["nixdist-build"]["valid_locally"] == 1
    assert moved["received"] == moved["asked"]
    assert moved["sent"] == 0
    assert moved["relayed"] > 0
    assert [g["measure"].startswith(("bytes", "wall")) for g in data["goals"]] == [True, True]
    assert "W6" in stdout


def test_builder_knows_its_speed(farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm]) -> None:
    farm = farm_factory((make_spec("v1", speed=3), make_spec("v2")))
    assert farm.run_in("v1", ["cat", "/etc/nix/nixdist-speed"]).stdout == b"3\n"
    assert farm.run_in("v2", ["cat", "/etc/nix/nixdist-speed"]).stdout == b"1\n"
