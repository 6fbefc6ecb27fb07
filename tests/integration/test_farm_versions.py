"""Builders and clients of other Nix versions: Debian root filesystems of Nix 2.8, 2.26, 2.34.

One farm of three builders, each chrooted in the root filesystem of its Nix version, and
clients of Nix 2.34 (and 2.26 with a nix-daemon) that build on them with Nix's own build hook.
Every version check compares with what that Nix prints itself (`rootfs_info` records the
``nix --version`` of each root filesystem when it is built).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import BuilderState, Farm, host_system, make_spec
from nixdist.farm.rootfs import ensure_rootfs_many, rootfs_info

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from nixdist.farm import BuilderSpec

pytestmark = pytest.mark.integration

CLI = "import sys; from nixdist.cli import main; sys.exit(main(sys.argv[1:]))"
VERSIONS = ("2.8", "2.26", "2.34")
BUILDERS = {"v28": "2.8", "v226": "2.26", "v234": "2.34"}

SMOKE_NIX = """
{ nonce, system }:
derivation {
  name = "nixdist-versions-${nonce}";
  inherit system;
  builder = "/bin/sh";
  args = [ "-c" "read n < /etc/nix/nixdist-builder; echo $n > $out" ];
}
"""

WHOAMI_NIX = """
{ nonce, system }:
derivation {
  name = "nixdist-whoami-${nonce}";
  inherit system;
  builder = "/bin/sh";
  args = [ "-c" "/usr/bin/id -un > $out" ];
}
"""


def _version_number(line: str) -> str:
    """``2.34.8`` from ``nix (Nix) 2.34.8`` (what every Nix command's --version prints)."""
    match = re.search(r"\(Nix\) (\d+\.\d+(?:\.\d+)?\S*)", line)
    assert match, f"no Nix version in {line!r}"
    return match.group(1)


def _expected(version: str) -> str:
    info = rootfs_info(version)
    assert info is not None
    number = _version_number(info.nix_version)
    assert number.startswith(f"{version}."), (version, info.nix_version)
    return number


@pytest.fixture(scope="module")
def version_farm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Iterator[Farm]:
    ensure_rootfs_many(VERSIONS)  # cached by `make rootfs`; built here otherwise (minutes)
    farm = farm_factory(tuple(make_spec(name, nix=v) for name, v in BUILDERS.items()))
    yield farm
    farm.down()
    for version in VERSIONS:
        farm.reset_client(version)


@pytest.fixture
def vfarm(version_farm: Farm) -> Iterator[Farm]:
    version_farm.heal()
    yield version_farm
    version_farm.heal()


def _ssh(farm: Farm, name: str, *command: str) -> str:
    result = subprocess.run(
        [*farm.ssh_argv(name), *command], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _client(
    farm: Farm,
    version: str,
    command: Sequence[str],
    *,
    cwd: Path,
    daemon: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = farm.client_argv(version, command, daemon=daemon, cwd=cwd)
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **farm.env(), **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(("name", "version"), BUILDERS.items())
def test_each_builder_runs_its_own_nix(vfarm: Farm, name: str, version: str) -> None:
    printed = _ssh(vfarm, name, "nix-store", "--version")
    assert _version_number(printed) == _expected(version)
    assert _ssh(vfarm, name, "cat", "/etc/nix/nixdist-builder") == f"{name}\n"


def test_status_shows_the_versions(vfarm: Farm) -> None:
    assert {s.name: s.spec.nix for s in vfarm.status()} == BUILDERS
    result = subprocess.run(
        [sys.executable, "-c", CLI, "farm", "status", "--dir", str(vfarm.directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for name, version in BUILDERS.items():
        assert version in rows[name]


def test_run_in_runs_in_the_chroot_running_or_stopped(vfarm: Farm) -> None:
    running = vfarm.run_in("v226", ["nix-store", "--version"]).stdout.decode()
    assert _version_number(running) == _expected("2.26")
    root = vfarm.run_in("v226", ["cat", "/nixdist-rootfs.json"]).stdout.decode()
    assert '"suite": "trixie"' in root
    vfarm.stop("v226")
    assert vfarm.processes("v226") == []
    stopped = vfarm.run_in(
        "v226", ["sh", "-c", "nix-store --version; cat /etc/nix/nixdist-builder"]
    )
    lines = stopped.stdout.decode().splitlines()
    assert _version_number(lines[0]) == _expected("2.26")
    assert lines[1] == "v226"


def test_stop_start_freeze_thaw(vfarm: Farm) -> None:
    before = vfarm.builder_status("v234")
    assert before.pid in vfarm.processes("v234")
    vfarm.stop("v234")
    assert vfarm.builder_status("v234").state is BuilderState.STOPPED
    after = vfarm.start("v234")
    assert after.state is BuilderState.RUNNING
    assert after.port == before.port
    frozen = vfarm.freeze("v234")
    assert after.pid in frozen
    assert vfarm.builder_status("v234").state is BuilderState.FROZEN
    vfarm.thaw("v234")
    assert _version_number(_ssh(vfarm, "v234", "nix-store", "--version")) == _expected("2.34")


def test_up_restarts_a_builder_whose_nix_changed(vfarm: Farm) -> None:
    specs = [status.spec for status in vfarm.status()]
    other = [replace(spec, nix="2.34") if spec.name == "v28" else spec for spec in specs]
    pids = {status.name: status.pid for status in vfarm.status()}
    try:
        after = {status.name: status for status in vfarm.up(other)}
        assert after["v28"].pid != pids["v28"]
        assert after["v226"].pid == pids["v226"]
        printed = _ssh(vfarm, "v28", "nix-store", "--version")
        assert _version_number(printed) == _expected("2.34")
    finally:
        vfarm.up(specs)
    assert _version_number(_ssh(vfarm, "v28", "nix-store", "--version")) == _expected("2.8")


def test_noisy_shell_on_a_versioned_builder(vfarm: Farm) -> None:
    vfarm.set_noisy("v28", noisy=True)
    assert "welcome to farm builder v28" in _ssh(vfarm, "v28", "true")
    vfarm.set_noisy("v28", noisy=False)
    assert _ssh(vfarm, "v28", "true") == ""


def test_client_prints_its_nix_version(vfarm: Farm, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-c", CLI, "farm", "client", "--dir", str(vfarm.directory)),
            *("--nix", "2.34", "--", "nix", "--version"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _version_number(result.stdout) == _expected("2.34")


def test_client_exit_status_and_cwd(vfarm: Farm, tmp_path: Path) -> None:
    result = _client(vfarm, "2.26", ["sh", "-c", "pwd; exit 7"], cwd=tmp_path)
    assert result.returncode == 7
    assert result.stdout == f"{tmp_path}\n"


@pytest.mark.parametrize("name", ["v28", "v226"])
def test_nix_2_34_builds_with_its_own_hook_on_an_older_builder(
    vfarm: Farm, tmp_path: Path, name: str
) -> None:
    """A nix-build of Nix 2.34 with ``nix __build-remote`` sends the build to `name`."""
    (tmp_path / "smoke.nix").write_text(SMOKE_NIX)
    alias = vfarm.alias(name)
    lines = [line for line in vfarm.machines_file.read_text().splitlines() if alias in line]
    (tmp_path / "machines").write_text("\n".join(lines) + "\n")
    nix = _client(vfarm, "2.34", ["sh", "-c", "readlink -f $(command -v nix)"], cwd=tmp_path)
    assert nix.returncode == 0, nix.stderr
    nonce = uuid.uuid4().hex[:12]
    built = _client(
        vfarm,
        "2.34",
        [
            *("nix-build", "smoke.nix", "--no-out-link", "--max-jobs", "0"),
            *("--argstr", "nonce", nonce, "--argstr", "system", host_system()),
            *("--builders", f"@{tmp_path / 'machines'}"),
            *("--option", "build-hook", f"{nix.stdout.strip()} __build-remote"),
        ],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    out = built.stdout.strip()
    assert f"on 'ssh://{alias}'" in built.stderr
    assert vfarm.where_built([out]) == {out: [name]}
    local = vfarm.client_store_dir("2.34") / Path(out).name
    assert local.read_text() == f"{name}\n"
    verify = _client(vfarm, "2.34", ["nix-store", "--verify-path", out], cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr


def test_client_with_a_daemon_builds_as_a_build_user(vfarm: Farm, tmp_path: Path) -> None:
    (tmp_path / "whoami.nix").write_text(WHOAMI_NIX)
    nonce = uuid.uuid4().hex[:12]
    script = (
        'echo "$NIX_REMOTE"; '
        f"out=$(nix-build whoami.nix --no-out-link --argstr nonce {nonce}"
        f" --argstr system {host_system()}) && cat $out"
    )
    result = _client(vfarm, "2.26", ["sh", "-c", script], cwd=tmp_path, daemon=True)
    assert result.returncode == 0, result.stderr
    remote, user = result.stdout.split()
    assert remote == "daemon"
    assert re.fullmatch(r"nixbld[1-8]", user)


def test_the_root_filesystems_are_never_written(vfarm: Farm, tmp_path: Path) -> None:
    """Builders and clients write into overlays of their own, not the shared rootfs."""
    start = time.time() - 1
    _ssh(vfarm, "v234", "touch /usr/nixdist-probe /etc/nixdist-probe")
    _client(vfarm, "2.34", ["touch", "/var/nixdist-probe"], cwd=tmp_path)
    info = rootfs_info("2.34")
    assert info is not None
    newer = subprocess.run(
        ["find", str(info.path), "-xdev", "-newermt", f"@{start}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert newer.stdout == ""
    assert not (info.path / "usr" / "nixdist-probe").exists()


def test_rootfs_error_is_one_line(tmp_path: Path) -> None:
    """A debootstrap that fails names the suite and its log; a killed run's leftover goes."""
    leftover = tmp_path / ".bookworm.tmp" / "junk"
    leftover.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", CLI, "farm", "rootfs", "--nix", "2.8"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "NIXDIST_ROOTFS_DIR": str(tmp_path),
            "NIXDIST_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
        },
        check=False,
    )
    assert result.returncode == 1
    log = tmp_path / "bookworm.debootstrap.log"
    assert result.stderr.count("\n") == 1, result.stderr
    assert "debootstrap of bookworm failed" in result.stderr
    assert str(log) in result.stderr
    assert not leftover.exists()
    assert not (tmp_path / "bookworm").exists()
