"""`nixdist check` as a process, against the session farm (tests/integration/conftest.py).

Each test runs the installed console script with the farm's ``NIX_SSHOPTS`` and a Nix
configuration of its own (``NIX_CONF_DIR`` with ``build-hook`` set to our nixdist-hook and
``builders`` naming the farm), so this host's checks are deterministic. The farm's fault
switches (stop, freeze, noisy shell) are undone by the ``farm`` fixture after each test.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

import nixinfo
from nixdist.cli.check.observe import (
    WRITE_TEST_NAME,
)
from nixdist.cli.check.ssh import (
    key_fingerprint,
)
from nixdist.farm import host_system
from nixdist.model.machines import render_machine

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nixdist.farm import Farm

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")
NIXDIST_HOOK = Path(sys.executable).with_name("nixdist-hook")
BUILDERS = ("b1", "b2", "b3", "b4")


@pytest.fixture
def env(tmp_path: Path, farm: Farm, farm_nix_env: dict[str, str]) -> dict[str, str]:
    """The farm's Nix client environment, with a nix.conf that uses nixdist and the farm."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "nix.conf").write_text(
        f"build-hook = {NIXDIST_HOOK}\nbuilders = @{farm.machines_file}\n"
    )
    env = farm_nix_env | {
        "NIX_CONF_DIR": str(conf_dir),
        "NIX_USER_CONF_FILES": "",
        "COLUMNS": "250",
    }
    if nixinfo.effective_build_hook(env) != str(NIXDIST_HOOK):
        # Nix 2.25-2.33 ignore build-hook in nix.conf (NixOS/nix#15083): the environment works.
        env["NIX_CONFIG"] = f"build-hook = {NIXDIST_HOOK}"
    return env


@dataclasses.dataclass(frozen=True, slots=True)
class BuilderNix:
    """What a builder's own Nix says it is: its version and its serve protocol's."""

    version: str
    serve_protocol: str


@pytest.fixture
def builder_nix(farm: Farm) -> dict[str, BuilderNix]:
    """Asked of each builder's Nix over ssh, as a user would check by hand."""

    def ask(name: str) -> BuilderNix:
        def run_there(argv: Sequence[str], stdin: bytes) -> bytes:
            return subprocess.run(
                [*farm.ssh_argv(name), *argv], input=stdin, capture_output=True, check=True
            ).stdout

        version = run_there(["nix-store", "--version"], b"").decode()
        return BuilderNix(
            version=nixinfo.version_text(version),
            serve_protocol=nixinfo.serve_protocol_version(run_there),
        )

    return {name: ask(name) for name in BUILDERS}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NIXDIST), "check", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def run_json(args: list[str], env: dict[str, str], *, status: int) -> dict[str, object]:
    result = run([*args, "--json"], env)
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert data["ok"] is (status == 0)
    return data


def builders_by_name(data: dict[str, object], farm: Farm) -> dict[str, dict[str, object]]:
    builders = data["builders"]
    assert isinstance(builders, list)
    names = {farm.alias(name): name for name in farm.names()}
    return {names[b["host"]]: b for b in builders}


def findings(builder: dict[str, object]) -> dict[str, dict[str, str]]:
    items = builder["findings"]
    assert isinstance(items, list)
    return {f["check"]: f for f in items}


def table_row(output: str, alias: str) -> str:
    return next(line for line in output.splitlines() if f" {alias} " in line and "│" in line)


def machines_text(farm: Farm, changes: dict[str, dict[str, Any]]) -> str:
    """The farm's machines file with some fields of some builders changed."""
    lines = [
        render_machine(dataclasses.replace(machine, **changes.get(name, {})))
        for name, machine in zip(farm.names(), farm.machines(), strict=True)
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------


def test_check_says_when_nix_ignores_the_build_hook(env: dict[str, str]) -> None:
    """Asked what it uses, the installed Nix says whether nix.conf's build-hook counts."""
    conf_only = {k: v for k, v in env.items() if k != "NIX_CONFIG"}
    honoured = nixinfo.effective_build_hook(conf_only) == str(NIXDIST_HOOK)
    data = run_json([], conf_only, status=0 if honoured else 1)
    local = {f["check"]: f for f in cast("list[dict[str, Any]]", data["local"])}
    if honoured:
        assert local["build-hook"]["status"] == "ok"
    else:
        assert local["build-hook"]["status"] == "fail"
        assert "NixOS/nix#15083" in local["build-hook"]["message"]
        assert "NIX_CONFIG" in local["build-hook"]["hint"]


def test_healthy_farm(farm: Farm, env: dict[str, str], builder_nix: dict[str, BuilderNix]) -> None:
    data = run_json([], env, status=0)
    assert data["machines"] == f"builders = @{farm.machines_file}"
    local = data["local"]
    assert isinstance(local, list)
    assert [(f["check"], f["status"]) for f in local] == [
        ("build-hook", "ok"),
        ("builders", "ok"),
        ("current-load", "ok"),
        ("trusted", "ok"),
    ]
    builders = builders_by_name(data, farm)
    assert sorted(builders) == sorted(BUILDERS)
    for name, builder in builders.items():
        assert (builder["status"], builder["usable"], builder["verdict"]) == ("ok", True, "ok"), (
            name,
            builder,
        )
        assert builder["reach"] == "connected"
        assert builder["host_key"] == "pinned"
        assert builder["nix_version"] == builder_nix[name].version
        assert builder["serve_protocol"] == builder_nix[name].serve_protocol
        assert builder["system"] == host_system()
        assert isinstance(builder["connect_ms"], float)
        assert isinstance(builder["handshake_ms"], float)
        assert isinstance(builder["store_free_bytes"], int)
        assert all(f["status"] == "ok" for f in findings(builder).values()), builder
        assert findings(builder)["store"]["message"].startswith("writable")
    assert len(builders["b3"]["extra_platforms"]) == 1  # type: ignore[arg-type]
    assert "big-parallel" in builders["b2"]["system_features"]  # type: ignore[operator]
    assert "benchmark" in builders["b4"]["system_features"]  # type: ignore[operator]
    # The write test leaves nothing behind.
    for name in BUILDERS:
        assert not [p for p in farm.builder_store_paths(name) if WRITE_TEST_NAME in p]


def test_healthy_farm_as_a_table(
    farm: Farm, env: dict[str, str], builder_nix: dict[str, BuilderNix]
) -> None:
    result = run([], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "This host" in out
    assert f"4 builders (builders = @{farm.machines_file})" in out
    for name in BUILDERS:
        row = table_row(out, farm.alias(name))
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[1] == "ok"
        assert cells[4:6] == [builder_nix[name].version, builder_nix[name].serve_protocol]
        assert cells[2].endswith(" ms")
        assert cells[6].startswith(host_system())


def test_stopped_builder(farm: Farm, env: dict[str, str]) -> None:
    farm.stop("b2")
    data = run_json([], env, status=1)
    builders = builders_by_name(data, farm)
    b2 = builders["b2"]
    assert (b2["usable"], b2["reach"], b2["verdict"]) == (
        False,
        "unreachable",
        "unusable: unreachable",
    )
    connect = findings(b2)["connect"]
    assert connect["status"] == "fail"
    assert connect["message"].startswith("unreachable: connect to host 127.0.0.1 port ")
    assert connect["message"].endswith("Connection refused")
    assert "Is the builder up" in connect["hint"]
    assert all(builders[n]["status"] == "ok" for n in ("b1", "b3", "b4"))
    table = run([], env)
    assert table.returncode == 1
    assert "unusable: unreachable" in table_row(table.stdout, farm.alias("b2"))
    assert "Connection refused" in table.stdout


def test_frozen_builder_times_out(farm: Farm, env: dict[str, str]) -> None:
    farm.freeze("b3")
    result = run(["--json", "--timeout", "2"], env)
    assert result.returncode == 1, result.stderr
    b3 = builders_by_name(json.loads(result.stdout), farm)["b3"]
    assert (b3["reach"], b3["verdict"]) == ("timed out", "unusable: timed out")
    assert "timed out" in findings(b3)["connect"]["message"]


def test_noisy_shell(farm: Farm, env: dict[str, str], builder_nix: dict[str, BuilderNix]) -> None:
    farm.set_noisy("b1", noisy=True)
    data = run_json([], env, status=1)
    builders = builders_by_name(data, farm)
    b1 = builders["b1"]
    assert (b1["usable"], b1["verdict"]) == (False, "unusable: noisy shell")
    shell = findings(b1)["shell"]
    assert shell["status"] == "fail"
    assert "'welcome to farm builder b1'" in shell["message"]
    assert "printed this on stdout before nix-store started" in shell["message"]
    assert ".bashrc" in shell["hint"]
    assert findings(b1)["serve"]["status"] == "skip"
    # The rest of the report still comes through the chatter.
    assert b1["nix_version"] == builder_nix["b1"].version
    assert b1["system"] == host_system()
    assert all(builders[n]["status"] == "ok" for n in ("b2", "b3", "b4"))
    table = run([], env)
    assert "unusable: noisy shell" in table_row(table.stdout, farm.alias("b1"))
    assert "welcome to farm builder b1" in table.stdout


def test_wrong_host_key(tmp_path: Path, farm: Farm, env: dict[str, str]) -> None:
    machines = {m.uri: m for m in farm.machines()}
    b1 = machines[f"ssh://{farm.alias('b1')}"]
    b2 = machines[f"ssh://{farm.alias('b2')}"]
    assert b1.public_host_key
    assert b2.public_host_key
    path = tmp_path / "machines"
    path.write_text(machines_text(farm, {"b1": {"public_host_key": b2.public_host_key}}))
    data = run_json(["--machines", str(path)], env, status=1)
    assert data["machines"] == str(path)
    builders = builders_by_name(data, farm)
    bad = builders["b1"]
    assert (bad["reach"], bad["host_key"], bad["verdict"]) == (
        "host key mismatch",
        "mismatch",
        "unusable: host key mismatch",
    )
    key = findings(bad)["host key"]
    pinned = key_fingerprint(base64.b64decode(b2.public_host_key).decode())
    sent = key_fingerprint(base64.b64decode(b1.public_host_key).decode())
    assert key["message"] == (
        f"host key mismatch: the machines line pins {pinned}, the builder sent {sent}"
    )
    assert "field 8" in key["hint"]
    assert all(builders[n]["status"] == "ok" for n in ("b2", "b3", "b4"))
    table = run(["--machines", str(path)], env)
    assert table.returncode == 1
    assert "unusable: host key mismatch" in table_row(table.stdout, farm.alias("b1"))


def test_authentication_refused(tmp_path: Path, farm: Farm, env: dict[str, str]) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(farm.ssh_config.read_text().replace(str(farm.client_key), str(key)))
    path = tmp_path / "machines"
    path.write_text(machines_text(farm, {n: {"ssh_key": str(key)} for n in BUILDERS}))
    data = run_json(["--machines", str(path)], env | {"NIX_SSHOPTS": f"-F {config}"}, status=1)
    for builder in builders_by_name(data, farm).values():
        assert (builder["reach"], builder["host_key"]) == ("authentication refused", "pinned")
        assert "Permission denied (publickey)" in findings(builder)["connect"]["message"]


def test_claims_the_builder_cannot_honour_only_warn(
    tmp_path: Path, farm: Farm, env: dict[str, str]
) -> None:
    path = tmp_path / "machines"
    claims: dict[str, dict[str, Any]] = {"b1": {"supported_features": frozenset({"kvm-nowhere"})}}
    claims["b2"] = {"systems": (host_system(), "mips-nowhere")}
    path.write_text(machines_text(farm, claims))
    data = run_json(["--machines", str(path)], env, status=0)
    builders = builders_by_name(data, farm)
    assert builders["b1"]["verdict"] == "warnings: features"
    assert "claims kvm-nowhere" in findings(builders["b1"])["features"]["message"]
    assert builders["b2"]["verdict"] == "warnings: systems"
    assert "claims mips-nowhere" in findings(builders["b2"])["systems"]["message"]


def test_this_host_without_nixdist_or_builders(tmp_path: Path, env: dict[str, str]) -> None:
    conf_dir = tmp_path / "empty-conf"
    conf_dir.mkdir()
    bare = {k: v for k, v in env.items() if k != "NIX_CONFIG"} | {"NIX_CONF_DIR": str(conf_dir)}
    data = run_json([], bare, status=1)
    local = {f["check"]: f for f in cast("list[dict[str, Any]]", data["local"])}
    assert local["build-hook"]["status"] == "warn"
    assert "not set" in local["build-hook"]["message"]
    assert local["builders"]["status"] == "fail"
    assert local["builders"]["message"] == (
        f"no builders: builders = @{conf_dir}/machines lists no machine"
    )
    assert data["builders"] == []


def test_unreadable_machines_file_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    result = run(["--machines", str(tmp_path / "nope")], env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"nixdist: error: {tmp_path / 'nope'}: no such file\n"


def test_a_builder_on_two_lines_is_judged_per_line(
    tmp_path: Path, farm: Farm, env: dict[str, str]
) -> None:
    """Both lines share one connection; each gets the verdict its own claims deserve."""
    b1 = next(m for m in farm.machines() if m.uri == f"ssh://{farm.alias('b1')}")
    claims_more = dataclasses.replace(b1, supported_features=frozenset({"kvm-nowhere"}))
    path = tmp_path / "machines"
    path.write_text(f"{render_machine(b1)}\n{render_machine(claims_more)}\n")
    data = run_json(["--machines", str(path)], env, status=0)
    builders = data["builders"]
    assert isinstance(builders, list)
    assert [(b["host"], b["verdict"]) for b in builders] == [
        (farm.alias("b1"), "ok"),
        (farm.alias("b1"), "warnings: features"),
    ]
    assert builders[0]["connect_ms"] == builders[1]["connect_ms"]
