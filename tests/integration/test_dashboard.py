"""`nixdist serve` after real distributed builds on the farm, looked at in headless Chromium.

Real ``nix-build`` with nixdist-hook builds six derivations on the session farm, writing the
history to a fresh state directory; the real ``nixdist serve`` (a subprocess, same state
directory and machines file) serves it, and the page, opened in Chromium (`browser`), must
show every builder and every finished build on the machine whose store really built it. Then
a build that waits for a gate file starts while the page stays open: it must appear among the
running builds and then among the finished ones, with no reload (a marker set in the page's
window survives). Screenshots go to ``test-artifacts/`` (repo root) and the test's tmp dir.
``/metrics`` from the same server must parse and agree with ``/api/status`` and the history.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from browser import Browser
from nixdist.state.db import StateDB
from nixrun import HANG_GUARD_S, HOOKTEST, fresh_salt, nix_build, nix_build_argv, ok

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conftest import FarmFixture

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NAMES = ("b1", "b2", "b3", "b4")

# A derivation that builds until its gate file appears (in /var/tmp, which every farm
# namespace shares): the test decides when it ends, no clock does.
GATED_NIX = """
{ salt, gate }:
derivation {
  name = "dashboard-gated";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  inherit salt gate;
  args = [ "-c" ''
    echo "waiting for $gate"
    while [ ! -e "$gate" ]; do sleep 0.1; done
    echo "$salt" > "$out"
  '' ];
}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dashboard:
    url: str  # http://127.0.0.1:<port>/
    state: Path
    env: dict[str, str]
    builders: str
    work: Path
    plains: dict[str, str]  # drv -> output, built before the server started


def _instantiate(args: list[str]) -> list[str]:
    return subprocess.run(
        ["nix-instantiate", *args], capture_output=True, text=True, check=True
    ).stdout.split()


def _outputs(drvs: list[str]) -> list[str]:
    return subprocess.run(
        ["nix-store", "-q", "--outputs", *drvs], capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.fixture(scope="module")
def dashboard(
    local_farm: FarmFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    work = tmp_path_factory.mktemp("dashboard")
    state = work / "state"
    env = {**local_farm.nix_env(), "NIXDIST_STATE_DIR": str(state)}
    env.pop("NIXDIST_DASHBOARD_TOKEN", None)
    builders = f"@{local_farm.machines}"
    # each sleeps a second so that they overlap and spread over the builders
    args = [str(HOOKTEST), "-A", "plains", "--argstr", "salt", fresh_salt("dashboard")]
    args += ["--argstr", "sleep", "1"]
    drvs = _instantiate(args)
    ok(nix_build(args, env, builders=builders))
    serve = [str(NIXDIST), "dashboard", "--machines", str(local_farm.machines)]
    with (work / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [*serve, "--listen", "127.0.0.1:0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert server.stdout is not None
    try:
        line = server.stdout.readline()
        assert line.startswith("nixdist dashboard on http://127.0.0.1:"), (
            line + (work / "serve.log").read_text()
        )
        yield Dashboard(
            url=line.split()[-1],
            state=state,
            env=env,
            builders=builders,
            work=work,
            plains=dict(zip(drvs, _outputs(drvs), strict=True)),
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=HANG_GUARD_S)
        finally:
            server.kill()
            server.stdout.close()
        errors = (work / "serve.log").read_text()
        assert "Traceback" not in errors, errors


def _rows(browser: Browser, table: str) -> list[dict[str, Any]]:
    """The rows of a table on the page: their data attributes and cell texts."""
    return cast(
        "list[dict[str, Any]]",
        browser.evaluate(
            f"Array.from(document.querySelectorAll('#{table} tbody tr')).map(row => "
            "({data: Object.assign({}, row.dataset), "
            "cells: Array.from(row.children).map(cell => cell.textContent)}))"
        ),
    )


def _save(browser: Browser, name: str, tmp_path: Path) -> None:
    browser.screenshot(tmp_path / name)
    browser.screenshot(ARTIFACTS / name)


def test_page_shows_builders_builds_and_a_running_build_live(
    dashboard: Dashboard, local_farm: FarmFixture, tmp_path: Path
) -> None:
    uri_of = {name: f"ssh://{local_farm.alias(name)}" for name in NAMES}
    with Browser.start(tmp_path) as browser:
        browser.open(dashboard.url)
        browser.wait_for("Number(document.body.dataset.polls) >= 1", "the first poll")
        browser.evaluate("window.nixdistTestMarker = 'no reload'")
        _check_builders_and_finished_builds(browser, dashboard, local_farm, uri_of)

        drv, machine, out = _gated_build_seen_running(browser, dashboard, tmp_path)
        finished = (
            f"document.querySelector('#recent tr[data-drv={json.dumps(drv)}]')?.dataset.status"
        )
        assert browser.wait_for(finished, "the gated build among the finished ones") == "built"
        browser.wait_for(
            f"!document.querySelector('#running tr[data-drv={json.dumps(drv)}]')",
            "the gated build to leave the running builds",
        )
        [builder] = local_farm.farm.where_built([out])[out]
        assert machine == uri_of[builder]
        assert browser.evaluate("window.nixdistTestMarker") == "no reload"
        assert browser.evaluate("document.body.dataset.error") == ""
        _save(browser, "dashboard.png", tmp_path)
        thrown = [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"]
        assert thrown == []


def _check_builders_and_finished_builds(
    browser: Browser, dashboard: Dashboard, local_farm: FarmFixture, uri_of: dict[str, str]
) -> None:
    # every builder of the machines file, by name, up
    machines = _rows(browser, "machines")
    assert [row["data"]["uri"] for row in machines] == [uri_of[name] for name in NAMES]
    text = browser.evaluate("document.getElementById('machines').innerText")
    for name in NAMES:
        assert local_farm.alias(name) in text
    assert all(row["cells"][1].startswith("up") for row in machines)

    # every finished build, on the machine whose store built it
    where = local_farm.farm.where_built(dashboard.plains.values())
    recent = {row["data"]["drv"]: row for row in _rows(browser, "recent")}
    assert set(dashboard.plains) <= set(recent)
    for drv, out in dashboard.plains.items():
        row = recent[drv]
        assert row["data"]["status"] == "built"
        [builder] = where[out]
        assert row["cells"][2] == uri_of[builder]
        assert row["cells"][1] == drv.split("-", 1)[1].removesuffix(".drv")
    assert _rows(browser, "running") == []


def _gated_build_seen_running(
    browser: Browser, dashboard: Dashboard, tmp_path: Path
) -> tuple[str, str, str]:
    """Start the gated build, see it running on the page (and its slot taken), release it and
    wait for nix-build; returns its derivation, the machine the page showed, and its output."""
    gate = Path("/var/tmp") / f"nixdist-dashboard-gate-{fresh_salt('gate')}"
    nix_file = tmp_path / "gated.nix"
    nix_file.write_text(GATED_NIX)
    args = [str(nix_file), "--argstr", "salt", fresh_salt("gated"), "--argstr", "gate", str(gate)]
    [drv] = _instantiate(args)
    build = subprocess.Popen(
        nix_build_argv(args, builders=dashboard.builders),
        env=dashboard.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        running = (
            f"document.querySelector('#running tr[data-drv={json.dumps(drv)}]')?.dataset.machine"
        )
        machine = browser.wait_for(running, "the gated build among the running builds")
        slots = (
            "Array.from(document.querySelectorAll('#machines tr')).find(row => "
            f"row.dataset.uri === {json.dumps(machine)})?.children[2].textContent.trim()"
        )
        browser.wait_for(f"({slots} || '').startsWith('1 /')", "its slot in use")
        _save(browser, "dashboard-running.png", tmp_path)
        [row] = _rows(browser, "running")
        assert row["data"]["drv"] == drv
        assert row["cells"][1] == machine
        assert row["cells"][3] in {"connect", "upload", "build", "download"}
        gate.touch()
        stdout, stderr = build.communicate(timeout=HANG_GUARD_S)
        assert build.returncode == 0, stderr[-4000:]
    finally:
        gate.touch()  # never leave the remote build waiting
        build.kill()
        build.wait()
        gate.unlink(missing_ok=True)
    [out] = stdout.split()
    return drv, machine, out


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=HANG_GUARD_S) as response:  # noqa: S310
        body: bytes = response.read()
        return body


def test_metrics_agree_with_status_and_history(
    dashboard: Dashboard, local_farm: FarmFixture
) -> None:
    families = {
        family.name: family
        for family in text_string_to_metric_families(_get(f"{dashboard.url}metrics").decode())
    }
    status = json.loads(_get(f"{dashboard.url}api/status"))
    with StateDB.open(dashboard.state) as db:
        history = db.builds()
    assert history, "the build left no history"

    counted: dict[tuple[str, str], float] = {
        (s.labels["machine"], s.labels["status"]): s.value
        for s in families["nixdist_builds"].samples
    }
    in_history: dict[tuple[str, str], int] = {}
    for b in history:
        key = (b.machine, b.effective_status)
        in_history[key] = in_history.get(key, 0) + 1
    shown: dict[tuple[str, str], int] = {}
    for b in status["recent"]:
        key = (b["machine"], b["status"])
        shown[key] = shown.get(key, 0) + 1
    assert counted == in_history == shown
    assert sum(n for (_, s), n in counted.items() if s == "built") >= len(dashboard.plains)

    uris = [f"ssh://{local_farm.alias(name)}" for name in NAMES]

    def gauge(name: str) -> dict[str, float]:
        return {s.labels["machine"]: s.value for s in families[name].samples}

    assert gauge("nixdist_machine_up") == dict.fromkeys(uris, 1.0)
    assert gauge("nixdist_machine_max_jobs") == {
        m["uri"]: m["max_jobs"] for m in status["machines"]
    }
    assert gauge("nixdist_running_builds") == dict.fromkeys(uris, 0.0)
    durations = {
        s.labels["machine"]: s.value
        for s in families["nixdist_build_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert durations == {m: n for (m, st), n in counted.items() if st == "built"}
    downloaded = {
        s.labels["machine"]: s.value
        for s in families["nixdist_copied_bytes"].samples
        if s.labels["direction"] == "download"
    }
    for machine, n in downloaded.items():
        expected = sum(b.download_bytes or 0 for b in history if b.machine == machine)
        assert n == expected
        assert n > 0  # every builder that built something sent its output back
