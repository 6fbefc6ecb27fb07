"""The local farm for real: sshd per builder, own stores, Nix's build-remote through it.

Lifecycle and fault tests run on farms of their own (from `farm_factory`); the checks that only
read use the session farm of conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import BuilderState, Farm, host_system, make_spec, procs
from nixdist.wire.primitives import Reader, encode_u64

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nixdist.farm import BuilderSpec

pytestmark = pytest.mark.integration

SERVE_MAGIC_1 = 0x390C9DEB
SERVE_MAGIC_2 = 0x5452EECB
SERVE_VERSION = 0x207
HOST_STORE = Path("/nix/store")
CLI = "import sys; from nixdist.cli import main; sys.exit(main(sys.argv[1:]))"
# Generous bounds for things that happen at once on a healthy machine.
PATIENCE_SECONDS = 30.0

SMOKE_NIX = """
{ nonce, system, features ? [] }:
derivation {
  name = "nixdist-farm-smoke-${nonce}";
  inherit system;
  requiredSystemFeatures = features;
  builder = "/bin/sh";
  args = [ "-c" "read n < /etc/nix/nixdist-builder; echo $n > $out" ];
}
"""


def _nonce() -> str:
    return uuid.uuid4().hex[:12]


def _host_paths_with(text: str) -> set[str]:
    return {entry.name for entry in HOST_STORE.iterdir() if text in entry.name}


def _delete_host_paths(*paths: str) -> None:
    for path in paths:
        subprocess.run(["nix-store", "--delete", path], capture_output=True, check=False)


def _ssh(farm: Farm, name: str, *command: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        [*farm.ssh_argv(name), *command], input=stdin, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _banner(port: int, *, wait: float) -> bytes:
    """The first bytes the server at `port` sends, waiting at most `wait` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            return sock.recv(64)
        except TimeoutError:
            return b""


@pytest.fixture(scope="module")
def own_farm(farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm]) -> Iterator[Farm]:
    farm = farm_factory((make_spec("b1"), make_spec("b2", jobs=3)))
    yield farm
    farm.down()


@pytest.fixture
def lifecycle_farm(own_farm: Farm) -> Iterator[Farm]:
    own_farm.heal()
    yield own_farm
    own_farm.heal()


# ------------------------------------------------------------------------ lifecycle


def test_up_is_idempotent(lifecycle_farm: Farm) -> None:
    before = lifecycle_farm.status()
    after = lifecycle_farm.up()
    assert [(s.name, s.pid, s.port, s.mount_ns) for s in after] == [
        (s.name, s.pid, s.port, s.mount_ns) for s in before
    ]
    assert all(s.state is BuilderState.RUNNING for s in after)


def test_up_starts_only_missing_builders(lifecycle_farm: Farm) -> None:
    before = {s.name: s for s in lifecycle_farm.status()}
    lifecycle_farm.stop("b1")
    after = {s.name: s for s in lifecycle_farm.up()}
    assert after["b1"].state is BuilderState.RUNNING
    assert after["b1"].port == before["b1"].port
    assert after["b1"].pid != before["b1"].pid
    assert after["b2"].pid == before["b2"].pid


def test_down_leaves_no_process(lifecycle_farm: Farm) -> None:
    statuses = lifecycle_farm.status()
    namespaces = {s.mount_ns for s in statuses}
    pids = {s.pid for s in statuses}
    assert None not in namespaces
    _ssh(lifecycle_farm, "b1", "true")

    lifecycle_farm.down()
    lifecycle_farm.down()  # idempotent

    for status in lifecycle_farm.status():
        assert status.state is BuilderState.STOPPED
        assert lifecycle_farm.processes(status.name) == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", status.port)).close()
    for pid in pids:
        assert pid is not None
        assert not procs.is_alive(pid) or procs.mount_ns(pid) not in namespaces
    # and up brings the same builders back, on the same ports
    again = lifecycle_farm.up()
    assert [s.port for s in again] == [s.port for s in statuses]
    assert _ssh(lifecycle_farm, "b2", "cat", "/etc/nix/nixdist-builder") == b"b2\n"


def test_stop_and_start(lifecycle_farm: Farm) -> None:
    port = lifecycle_farm.builder_status("b1").port
    lifecycle_farm.stop("b1")
    assert lifecycle_farm.builder_status("b1").state is BuilderState.STOPPED
    assert lifecycle_farm.processes("b1") == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port)).close()
    assert lifecycle_farm.builder_status("b2").state is BuilderState.RUNNING

    status = lifecycle_farm.start("b1")
    assert status.state is BuilderState.RUNNING
    assert status.port == port
    # same host key: strict host key checking passes
    assert _ssh(lifecycle_farm, "b1", "cat", "/etc/nix/nixdist-builder") == b"b1\n"


def test_stop_kills_sessions(lifecycle_farm: Farm) -> None:
    session = subprocess.Popen(
        [*lifecycle_farm.ssh_argv("b1"), "echo started; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == b"started\n"
        before = set(lifecycle_farm.processes("b1"))
        assert len(before) >= 3

        lifecycle_farm.stop("b1")
        assert session.wait() != 0
        assert lifecycle_farm.processes("b1") == []
        assert not any(procs.is_alive(pid) for pid in before)
    finally:
        session.kill()
        session.wait()
        if session.stdout is not None:
            session.stdout.close()


def test_freeze_and_thaw(lifecycle_farm: Farm) -> None:
    session = subprocess.Popen(
        [*lifecycle_farm.ssh_argv("b2"), "echo started; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == b"started\n"
        port = lifecycle_farm.builder_status("b2").port

        frozen = lifecycle_farm.freeze("b2")
        assert set(frozen) == set(lifecycle_farm.processes("b2"))
        assert len(frozen) >= 3
        assert all(procs.is_stopped(pid) for pid in frozen)
        assert lifecycle_farm.builder_status("b2").state is BuilderState.FROZEN
        # The kernel still accepts the connection; nobody answers it.
        assert _banner(port, wait=0.5) == b""

        lifecycle_farm.thaw("b2")
        assert not any(procs.is_stopped(pid) for pid in lifecycle_farm.processes("b2"))
        assert lifecycle_farm.builder_status("b2").state is BuilderState.RUNNING
        assert _banner(port, wait=PATIENCE_SECONDS).startswith(b"SSH-2.0-")
        assert _ssh(lifecycle_farm, "b2", "echo", "ok") == b"ok\n"
    finally:
        session.kill()
        session.wait()
        if session.stdout is not None:
            session.stdout.close()


def test_noisy_shell_breaks_the_serve_handshake(lifecycle_farm: Farm) -> None:
    lifecycle_farm.set_noisy("b1", noisy=True)
    assert lifecycle_farm.builder_status("b1").noisy
    hello = encode_u64(SERVE_MAGIC_1) + encode_u64(SERVE_VERSION)
    noisy = _ssh(lifecycle_farm, "b1", "nix-store", "--serve", "--write", stdin=hello)
    assert noisy.startswith(b"welcome to farm builder b1\n")

    lifecycle_farm.set_noisy("b1", noisy=False)
    clean = _ssh(lifecycle_farm, "b1", "nix-store", "--serve", "--write", stdin=hello)
    assert Reader(clean).read_u64() == SERVE_MAGIC_2


def test_run_in_a_stopped_builder_sees_its_store(lifecycle_farm: Farm) -> None:
    nonce = _nonce()
    added = lifecycle_farm.run_in(
        "b1", ["sh", "-c", f"echo {nonce} > /tmp/{nonce} && nix-store --add /tmp/{nonce}"]
    )
    path = added.stdout.decode().strip()
    lifecycle_farm.stop("b1")
    seen = lifecycle_farm.run_in("b1", ["sh", "-c", "cat /etc/nix/nixdist-builder; ls /nix/store"])
    assert seen.stdout.decode().splitlines()[0] == "b1"
    assert Path(path).name in seen.stdout.decode().split()
    assert path in lifecycle_farm.builder_store_paths("b1")
    assert lifecycle_farm.processes("b1") == []  # the command's namespace is gone with it


def test_reset_empties_the_stores(
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm], tmp_path: Path
) -> None:
    farm = farm_factory((make_spec("r1"),))
    farm.run_in("r1", ["sh", "-c", "echo x > /tmp/x && nix-store --add /tmp/x"])
    assert len(farm.builder_store_paths("r1")) == 1
    port = farm.builder_status("r1").port
    farm.reset(ssh_config=tmp_path / "ssh_config")
    assert farm.builder_status("r1").state is BuilderState.STOPPED
    assert farm.builder_store_paths("r1") == ()
    assert farm.up()[0].port == port
    assert _ssh(farm, "r1", "cat", "/etc/nix/nixdist-builder") == b"r1\n"


def test_up_removes_builders_no_longer_named(
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> None:
    farm = farm_factory((make_spec("k1"), make_spec("k2")))
    k2_dir = farm.builder_dir("k2")
    k2_pid = farm.builder_status("k2").pid
    statuses = farm.up((make_spec("k1", jobs=4),))
    assert [s.name for s in statuses] == ["k1"]
    assert statuses[0].spec.max_jobs == 4
    assert not k2_dir.exists()
    assert k2_pid is not None
    assert not procs.is_alive(k2_pid)
    assert "k2" not in farm.ssh_config.read_text().split()
    assert "max-jobs = 4" in (farm.builder_dir("k1") / "etc-nix" / "nix.conf").read_text()


@pytest.mark.usefixtures("require_farm")
def test_cli_up_status_stop_down(tmp_path: Path) -> None:
    directory = tmp_path / "clifarm"
    prefix = f"nixdist-cli{os.getpid()}-"

    def nixdist(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", CLI, "farm", *args, "--dir", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        out = nixdist(
            "up",
            "--count",
            "1",
            "--builder",
            f"c2:systems={host_system()},riscv64-linux;features=big-parallel;jobs=2;speed=3",
            "--alias-prefix",
            prefix,
        )
        assert f"{prefix}c2" in out
        statuses = {s["name"]: s for s in json.loads(nixdist("status", "--json"))}
        assert statuses["b1"]["state"] == "running"
        assert statuses["c2"]["systems"] == [host_system(), "riscv64-linux"]
        assert statuses["c2"]["jobs"] == 2
        machines = (directory / "machines").read_text()
        assert f"ssh://{prefix}c2 {host_system()},riscv64-linux " in machines
        nixdist("stop", "c2")
        assert json.loads(nixdist("status", "--json"))[1]["state"] == "stopped"
        assert "NIX_SSHOPTS" in nixdist("env")
    finally:
        nixdist("down")
    assert all(s["state"] == "stopped" for s in json.loads(nixdist("status", "--json")))


# ------------------------------------------------------------------------ the session farm


def test_builders_answer_over_ssh(farm: Farm) -> None:
    for name in farm.names():
        assert _ssh(farm, name, "cat", "/etc/nix/nixdist-builder") == f"{name}\n".encode()
    version = _ssh(farm, "b1", "nix-store", "--version")
    assert version.startswith(b"nix-store (Nix) ")


def test_builder_nix_conf(farm: Farm) -> None:
    shown = _ssh(farm, "b3", "nix", "show-config").decode()
    settings = {
        key.strip(): value.strip()
        for key, _, value in (line.partition("=") for line in shown.splitlines())
    }
    assert settings["system"] == host_system()
    assert settings["extra-platforms"] != ""
    assert settings["sandbox"] == "false"
    assert settings["build-users-group"] == ""
    b4 = _ssh(farm, "b4", "nix", "show-config").decode()
    assert "system-features = benchmark\n" in b4


def test_serve_handshake(farm: Farm) -> None:
    hello = encode_u64(SERVE_MAGIC_1) + encode_u64(SERVE_VERSION)
    reply = Reader(_ssh(farm, "b1", "nix-store", "--serve", "--write", stdin=hello))
    assert reply.read_u64() == SERVE_MAGIC_2
    assert reply.read_u64() & 0xFF00 == 0x200
    reply.check_end()


def test_stores_are_isolated(farm: Farm) -> None:
    nonce = _nonce()
    added = farm.run_in(
        "b1", ["sh", "-c", f"echo {nonce} > /tmp/{nonce} && nix-store --add /tmp/{nonce}"]
    )
    path = added.stdout.decode().strip()
    name = Path(path).name
    assert path in farm.builder_store_paths("b1")
    assert (farm.store_dir("b1") / name).read_text() == f"{nonce}\n"
    assert path not in farm.builder_store_paths("b2")
    assert not (farm.store_dir("b2") / name).exists()
    assert _host_paths_with(nonce) == set()
    seen_by_b2 = farm.run_in("b2", ["ls", "/nix/store"]).stdout.decode().split()
    assert name not in seen_by_b2


def test_nix_copy_goes_to_the_builder_only(
    farm: Farm, farm_nix_env: dict[str, str], tmp_path: Path
) -> None:
    nonce = _nonce()
    source = tmp_path / f"copy-{nonce}"
    source.write_text(f"{nonce}\n")
    path = subprocess.run(
        ["nix-store", "--add", str(source)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        assert _host_paths_with(nonce) == {Path(path).name}
        subprocess.run(
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--option",
                "substituters",
                "",
                "--to",
                f"ssh://{farm.alias('b2')}",
                path,
            ],
            env=farm_nix_env,
            capture_output=True,
            check=True,
        )
        assert path in farm.builder_store_paths("b2")
        assert (farm.store_dir("b2") / Path(path).name).read_text() == f"{nonce}\n"
        assert path not in farm.builder_store_paths("b1")
        assert _host_paths_with(nonce) == {Path(path).name}
    finally:
        _delete_host_paths(path)


def _remote_build(
    tmp_path: Path, env: dict[str, str], builders: str, *args: str
) -> tuple[str, str]:
    """Build the smoke derivation with -j0 through Nix's build-remote; (output, builder)."""
    expr = tmp_path / "smoke.nix"
    expr.write_text(SMOKE_NIX)
    drv = subprocess.run(
        ["nix-instantiate", str(expr), "--argstr", "nonce", _nonce(), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = ""
    try:
        built = subprocess.run(
            [
                "nix-store",
                "--realise",
                drv,
                "-j0",
                "--option",
                "substituters",
                "",
                "--option",
                "build-hook",
                "/usr/libexec/nix/build-remote",
                "--builders",
                builders,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        out = built.stdout.strip()
        return out, Path(out).read_text().strip()
    finally:
        _delete_host_paths(*(p for p in (out, drv) if p))


def test_build_remote_through_the_farm(
    farm: Farm, farm_nix_env: dict[str, str], tmp_path: Path
) -> None:
    out, builder = _remote_build(
        tmp_path,
        farm_nix_env,
        f"ssh://{farm.alias('b1')} {host_system()}",
        "--argstr",
        "system",
        host_system(),
    )
    assert builder == "b1"
    assert out in farm.builder_store_paths("b1")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--arg", "features", '["big-parallel"]'), {"b2"}),
        (("--arg", "features", '["benchmark"]'), {"b4"}),
        ((), {"b1", "b2", "b3"}),
    ],
    ids=["big-parallel", "mandatory-benchmark", "plain"],
)
@pytest.mark.usefixtures("farm")
def test_machines_file_routes_by_feature(
    farm_nix_env: dict[str, str],
    farm_machines: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    expected: set[str],
) -> None:
    _, builder = _remote_build(
        tmp_path,
        farm_nix_env,
        f"@{farm_machines}",
        "--argstr",
        "system",
        host_system(),
        *args,
    )
    assert builder in expected


def test_machines_file_routes_by_system(
    farm: Farm, farm_nix_env: dict[str, str], farm_machines: Path, tmp_path: Path
) -> None:
    other = farm.builder_status("b3").spec.systems[1]
    _, builder = _remote_build(
        tmp_path, farm_nix_env, f"@{farm_machines}", "--argstr", "system", other
    )
    assert builder == "b3"
