"""nixdist-hook under a running ``nix-daemon``, used by an unprivileged user (multi-user Nix).

Under a daemon the build loop runs in the daemon's per-connection child, as root, and the hook
is that child's child with the *daemon's* environment and settings (nix-protocols.md §1.1-§1.3,
§1.8). This test starts its own daemon on a private socket, configured only from its command
line (``nix-daemon --option …``, which its legacy argument parser accepts) and its
environment (``NIX_SSHOPTS`` for the farm, ``NIXDIST_STATE_DIR``), creates an unprivileged
system user, and has that user run ``nix-build`` with ``NIX_REMOTE=daemon``.

What an untrusted client can and cannot change (``ClientSettings::apply`` in
``NixOS/nix@2.8.0:src/libstore/daemon.cc``), which shapes the test:

* ``max-jobs`` is a fixed field of the client's ``SetOptions`` request, sent by every client,
  trusted or not: the *client's* value replaces the daemon's ``max-jobs = 0`` (which thus
  never applies to a client's build). A client with the default (1) gets local builds whenever
  every builder is busy, and ``preferLocalBuild`` derivations are never offered to the hook;
  so the user passes ``-j0``, as a real setup would through the nix.conf its clients read.
* ``builders`` may be set only to the empty string by an untrusted user; any other value is
  ignored. So ``--builders ''`` does switch distribution off for that client (nixdist is still
  asked and declines permanently), while ``--builders <machines>`` cannot redirect it.
* ``build-hook`` cannot be changed by an untrusted user at all.

Which builder built an output is read from the builders' own stores: a path a builder built
itself is "ultimate" there, a path it received is not; a path nixdist imported into the local
store is not ultimate locally either.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import nixinfo
from nixdist.farm.builds import fresh_salt
from nixdist.state.paths import ssh_dir
from nixdist.transport.openssh import ControlMasters, target_for_machine
from nixrun import LOCAL_BUILD, nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from nixdist.farm import Farm
    from nixdist.model.machines import Machine

    from .conftest import FarmFixture

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DAG = FIXTURES / "dag.nix"
PREFER_LOCAL = FIXTURES / "daemon-prefer-local.nix"
HOOK = Path(sys.executable).with_name("nixdist-hook")
NIX_COMMAND = ["nix", "--extra-experimental-features", "nix-command"]
TEST_USER = "nixdist-test"
# A guard against a hang, never a performance limit: a stuck run fails instead of blocking CI.
HANG_GUARD_S = 900
# ------------------------------------------------------------------------------ the user


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemUser:
    name: str
    uid: int
    gid: int


def ensure_test_user(name: str = TEST_USER) -> SystemUser:
    """The unprivileged system user `name`, created if missing (no home, no login)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "nixdist integration tests",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode not in {0, 9}:  # 9: created meanwhile by a concurrent run
            pytest.fail(f"useradd {name} failed: {made.stderr.strip()}")
        entry = pwd.getpwnam(name)
    assert entry.pw_uid != 0
    return SystemUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


# ------------------------------------------------------------------------------ the daemon


@dataclass(frozen=True, slots=True, kw_only=True)
class Daemon:
    """A private ``nix-daemon`` and the world-readable directory its clients use."""

    pid: int
    socket: Path
    log: Path
    state: Path  # the daemon's (and so the hook's) NIXDIST_STATE_DIR
    env: dict[str, str]  # the daemon's environment
    public: Path  # world-readable: socket, fixtures, the user's home
    user: SystemUser

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def nix_build_as_user(
        self, args: Sequence[str], *, jobs: int = 0
    ) -> subprocess.CompletedProcess[str]:
        """``nix-build <args> -j <jobs>`` as the unprivileged user, through this daemon.

        `jobs` is 0 unless a test says otherwise: the client's max-jobs replaces the
        daemon's (see the module docstring)."""
        home = self.public / "home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "NIX_REMOTE": "daemon",
            "NIX_DAEMON_SOCKET_PATH": str(self.socket),
        }
        argv = [
            "setpriv",
            f"--reuid={self.user.uid}",
            f"--regid={self.user.gid}",
            "--clear-groups",
            "--",
            "nix-build",
            *args,
            "--no-out-link",
            "-j",
            str(jobs),
            "--option",
            "substituters",
            "",
        ]
        return subprocess.run(
            argv,
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
            timeout=HANG_GUARD_S,
        )


def daemon_unavailable() -> str | None:
    missing = [tool for tool in ("nix-daemon", "useradd", "setpriv") if not _which(tool)]
    return f"needs {', '.join(missing)}" if missing else None


def _which(tool: str) -> bool:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is not None


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _answers(sock: Path) -> bool:
    """Whether a daemon answers a real client on `sock` (``nix store ping``)."""
    if not sock.exists():
        return False
    ping = subprocess.run(
        [*NIX_COMMAND, "store", "ping", "--store", f"unix://{sock}"],
        capture_output=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    return ping.returncode == 0


def _environ_of(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def processes_with_env(entry: str) -> list[int]:
    """Every live process whose environment holds `entry` (``NAME=value``)."""
    wanted = entry.encode()
    return [
        int(proc.name)
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit()
        and int(proc.name) != os.getpid()
        and wanted in _environ_of(int(proc.name))
    ]


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


@pytest.fixture(scope="module")
def daemon(local_farm: FarmFixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if reason := daemon_unavailable():
        pytest.skip(reason)
    user = ensure_test_user()
    private = tmp_path_factory.mktemp("daemon")
    state = private / "nixdist-state"
    log = private / "nix-daemon.log"
    # tmp_path lies under a root-only directory: the user's side needs a world-readable one.
    public = Path(tempfile.mkdtemp(prefix="nixdist-daemon-"))
    public.chmod(0o755)
    home = public / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    sock = public / "socket"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"NIX_REMOTE", "NIX_REMOTE_SYSTEMS", "NIX_CONF_DIR", "NIX_CONFIG"}
    }
    env.update(
        NIX_SSHOPTS=local_farm.farm.nix_sshopts,
        NIXDIST_STATE_DIR=str(state),
        NIX_DAEMON_SOCKET_PATH=str(sock),
    )
    argv = [
        "nix-daemon",
        "--option",
        "build-hook",
        str(HOOK),
        "--option",
        "builders",
        f"@{local_farm.machines}",
        "--option",
        "max-jobs",
        "0",
        "--option",
        "substituters",
        "",
        *LOCAL_BUILD,
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    running = Daemon(
        pid=process.pid, socket=sock, log=log, state=state, env=env, public=public, user=user
    )
    try:
        deadline = time.monotonic() + 60  # hang guard only
        while not _answers(sock):
            if process.poll() is not None:
                pytest.fail(f"nix-daemon exited {process.returncode}: {running.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"nix-daemon never answered on {sock}: {running.log_text()}")
            time.sleep(0.05)
        yield running
    finally:
        _stop(process, running, local_farm)


def _stop(process: subprocess.Popen[bytes], daemon: Daemon, local_farm: FarmFixture) -> None:
    """Stop the daemon, its connection children and nixdist's ssh masters; then check that
    nothing started with this daemon's environment is left running."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    masters = ControlMasters(ssh_dir(daemon.state))
    for machine in local_farm.farm.machines():
        masters.stop_master(target_for_machine(machine, daemon.env))
    marker = f"NIXDIST_STATE_DIR={daemon.state}"
    deadline = time.monotonic() + 30
    while (left := processes_with_env(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = {pid: b" ".join(_cmdline(pid)).decode(errors="replace") for pid in left}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(daemon.public, ignore_errors=True)
    assert not described, f"left running after the daemon stopped: {described}"


# ------------------------------------------------------------------------------ helpers


def _query(*args: str) -> list[str]:
    out = subprocess.run(["nix-store", "-q", *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def graph_outputs(top: str, marker: str) -> list[str]:
    """The outputs of every derivation in `top`'s build graph whose name contains `marker`."""
    [drv] = _query("--deriver", top)
    drvs = [p for p in _query("--requisites", drv) if p.endswith(".drv") and marker in p]
    return _query("--outputs", *drvs)


def ultimate_locally(paths: Sequence[str]) -> list[str]:
    return nixinfo.ultimate(paths)


def public_copy(daemon: Daemon, fixture: Path) -> Path:
    """`fixture`, copied where the unprivileged user can read it."""
    target = daemon.public / fixture.name
    if not target.exists():
        shutil.copyfile(fixture, target)
        target.chmod(0o644)
    return target


def ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.split()


# ------------------------------------------------------------------------------ tests


def test_untrusted_users_builds_through_the_daemon_run_on_the_farm(
    farm: Farm, daemon: Daemon
) -> None:
    dag = public_copy(daemon, DAG)
    [top] = ok(daemon.nix_build_as_user([str(dag), "--argstr", "salt", fresh_salt("daemon")]))
    assert f"user {daemon.user.name}" in daemon.log_text()  # it really went through our daemon

    outputs = graph_outputs(top, "-dag-")
    assert len(outputs) == 51
    places = farm.where_built(outputs)
    assert all(len(names) == 1 for names in places.values()), places
    assert ultimate_locally(outputs) == [], "built locally instead of on the farm"

    # The hook was nixdist's, run with the daemon's environment: its ssh masters are where
    # the daemon's NIXDIST_STATE_DIR says, and alive (detached from the finished hooks).
    masters = ControlMasters(ssh_dir(daemon.state))
    used = {name for names in places.values() for name in names}
    for machine in local_farm_machines(farm, used):
        sock = masters.socket_path(target_for_machine(machine, daemon.env))
        assert _connectable(sock), f"no nixdist ssh master at {sock}"
    assert list((daemon.state / "ssh").glob("*.log"))


def local_farm_machines(farm: Farm, names: set[str]) -> list[Machine]:
    wanted = {f"ssh://{farm.alias(name)}" for name in names}
    return [m for m in farm.machines() if m.uri in wanted]


def test_untrusted_user_can_switch_builders_off_but_not_redirect_them(
    farm: Farm, daemon: Daemon
) -> None:
    dag = public_copy(daemon, DAG)
    small = ["--arg", "width", "1", "--arg", "depth", "1"]

    # A builders list of the client's own is ignored for an untrusted user: still the farm.
    salt = fresh_salt("redirect")
    [top] = ok(
        daemon.nix_build_as_user(
            [str(dag), *small, "--argstr", "salt", salt, "--builders", "ssh://nowhere.invalid"]
        )
    )
    outputs = graph_outputs(top, "-dag-")
    assert len(outputs) == 2
    assert all(len(names) == 1 for names in farm.where_built(outputs).values())

    # The empty list is the one value an untrusted user may set: the hook is still asked,
    # finds no machine and declines permanently; with -j0 nothing can build.
    refused = daemon.nix_build_as_user(
        [str(dag), *small, "--argstr", "salt", fresh_salt("off"), "--builders", ""]
    )
    assert refused.returncode != 0
    # The error Nix itself gives with no builders at all, here without a daemon or nixdist.
    alone = [str(DAG), *small, "--argstr", "salt", fresh_salt("off-alone")]
    expected = nixinfo.reference_error(nix_build_argv(alone, builders="", hook=None))
    assert nixinfo.last_error(refused.stderr) == expected, refused.stderr[-4000:]


def test_the_clients_max_jobs_replaces_the_daemons(farm: Farm, daemon: Daemon) -> None:
    """The daemon says max-jobs = 0, yet a client's -j 1 (Nix's default) lets the daemon build
    locally: here a ``preferLocalBuild`` derivation, which Nix then never offers to the hook.
    So max-jobs = 0 belongs in the nix.conf the clients read too, not on the daemon alone."""
    fixture = public_copy(daemon, PREFER_LOCAL)

    [remote] = ok(daemon.nix_build_as_user([str(fixture), "--argstr", "salt", fresh_salt("j0")]))
    assert len(farm.where_built([remote])[remote]) == 1
    assert ultimate_locally([remote]) == []

    [local] = ok(
        daemon.nix_build_as_user([str(fixture), "--argstr", "salt", fresh_salt("j1")], jobs=1)
    )
    assert farm.where_built([local])[local] == []
    assert ultimate_locally([local]) == [local]
