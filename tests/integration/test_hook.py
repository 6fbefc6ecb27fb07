"""nixdist-hook driven by the installed Nix against the local farm's real sshd builders.

Every fact is checked where it happens: which builder built an output is read from that
builder's own store (a path it built itself is "ultimate" there; a path it received is not),
concurrency from timestamps the builds write on the builder side, and output contents by
rebuilding locally with ``--check``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import nixinfo
from nixdist.model.machines import parse_machines
from nixdist.state.paths import ssh_dir
from nixdist.transport.openssh import ControlMasters, target_for_machine
from nixrun import (
    DAG,
    FIXTURES,
    HANG_GUARD_S,
    HOOK,
    HOOKTEST,
    LOCAL_BUILD,
    derivers,
    fresh_salt,
    machines_file,
    nix_build,
    nix_build_argv,
    ok,
    outputs_of_graph,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nixdist.farm import Farm

    from .conftest import FarmFixture

pytestmark = pytest.mark.integration


def _machines_file(local_farm: FarmFixture, path: Path, names: Sequence[str]) -> Path:
    return machines_file(local_farm.machines, local_farm.alias, path, names)


@pytest.fixture
def env(local_farm: FarmFixture) -> dict[str, str]:
    return local_farm.nix_env()


@pytest.fixture
def builders(local_farm: FarmFixture) -> str:
    return f"@{local_farm.machines}"


def test_dag_builds_entirely_on_builders_and_matches_local_builds(
    farm: Farm, env: dict[str, str], builders: str
) -> None:
    salt = fresh_salt("dag")
    [top] = ok(nix_build([str(DAG), "--argstr", "salt", salt], env, builders=builders))
    outputs = outputs_of_graph(top, "-dag-")
    assert len(outputs) == 51

    places = farm.where_built(outputs)
    assert all(len(names) == 1 for names in places.values()), places
    # b4 takes only derivations that require its mandatory feature: none of these.
    assert not any("b4" in names for names in places.values())

    # The same derivations built locally, without the hook, give the very same bytes:
    # --check rebuilds each one here and fails on any difference.
    check = subprocess.run(
        [
            "nix-store",
            "--realise",
            "--check",
            *derivers(outputs),
            "-j",
            "2",
            "--option",
            "substituters",
            "",
            "--builders",
            "",
            *LOCAL_BUILD,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    assert check.returncode == 0, check.stderr[-4000:]


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("bigParallel", {"b2"}),  # the only builder supporting big-parallel
        ("benchmark", {"b4"}),  # b4's mandatory feature: only it may take this
        ("otherPlatform", {"b3"}),  # the only builder listing the other system
    ],
)
def test_routing_by_features_and_system(
    farm: Farm, env: dict[str, str], builders: str, attr: str, expected: set[str]
) -> None:
    [out] = ok(
        nix_build(
            [str(HOOKTEST), "-A", attr, "--argstr", "salt", fresh_salt(attr)],
            env,
            builders=builders,
        )
    )
    assert set(farm.where_built([out])[out]) == expected


def test_plain_derivations_never_land_on_a_mandatory_feature_builder(
    farm: Farm, env: dict[str, str], builders: str
) -> None:
    outs = ok(
        nix_build(
            [str(HOOKTEST), "-A", "plains", "--argstr", "salt", fresh_salt("plains")],
            env,
            builders=builders,
        )
    )
    places = farm.where_built(outs)
    assert all(len(names) == 1 and names != ["b4"] for names in places.values()), places


def test_no_capable_builder_declines(farm: Farm, env: dict[str, str], builders: str) -> None:
    salt = fresh_salt("kvm")
    # -j0: Nix's own error, the very one it gives with its own build-remote.
    args = [str(HOOKTEST), "-A", "kvm", "--argstr", "salt", salt]
    refused = nix_build(args, env, builders=builders)
    assert refused.returncode != 0
    with_build_remote = nix_build_argv(args, builders=builders, hook=None)
    assert nixinfo.last_error(refused.stderr) == nixinfo.reference_error(with_build_remote, env=env)
    assert "Failed to find a machine for remote build!" in refused.stderr
    # With a local slot the hook declines and Nix builds it here. Nix itself would refuse to
    # build a kvm derivation on a machine without kvm, so the machine gets the feature.
    [out] = ok(
        nix_build(
            [
                str(HOOKTEST),
                "-A",
                "kvm",
                "--argstr",
                "salt",
                salt,
                "--option",
                "system-features",
                "kvm",
                *LOCAL_BUILD,
            ],
            env,
            builders=builders,
            jobs=1,
        )
    )
    assert farm.where_built([out])[out] == []
    assert Path(out, "id").read_text() == f"needs-kvm {salt}\n"


def test_two_nix_processes_never_exceed_a_builders_max_jobs(
    local_farm: FarmFixture, env: dict[str, str], tmp_path: Path
) -> None:
    record = Path("/var/tmp") / f"nixdist-jobs-{fresh_salt('record')}"  # shared by all namespaces
    # b1 (2 jobs) and b2 (1 job) only, so the two clients must share them.
    machines = _machines_file(local_farm, tmp_path / "machines", ["b1", "b2"])
    runs = [
        subprocess.Popen(
            nix_build_argv(
                [
                    str(HOOKTEST),
                    "-A",
                    "plains",
                    "--argstr",
                    "salt",
                    fresh_salt(f"jobs{i}"),
                    "--argstr",
                    "record",
                    str(record),
                    "--argstr",
                    "sleep",
                    "1",
                ],
                builders=f"@{machines}",
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=HANG_GUARD_S)
        assert run.returncode == 0, err[-4000:]
    try:
        events = [line.split() for line in record.read_text().splitlines()]
    finally:
        record.unlink(missing_ok=True)
    assert len(events) == 24  # 2 clients x 6 derivations x (start, end)
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for kind, _name, where, _when in sorted(events, key=lambda e: (float(e[3]), e[0] == "start")):
        running[where] += 1 if kind == "start" else -1
        peak[where] = max(peak[where], running[where])
    assert set(peak) <= {"b1", "b2"}
    assert peak["b1"] <= 2
    assert peak["b2"] <= 1
    assert peak["b1"] + peak["b2"] >= 2, "the two clients never ran in parallel"


def test_remote_log_is_nix_log(env: dict[str, str], builders: str) -> None:
    salt = fresh_salt("log")
    [out] = ok(
        nix_build([str(HOOKTEST), "-A", "logged", "--argstr", "salt", salt], env, builders=builders)
    )
    [drv] = derivers([out])
    log = subprocess.run(
        ["nix-store", "--read-log", drv], capture_output=True, text=True, check=True
    ).stdout
    assert f"LOG-MARKER-{salt}" in log
    assert "second line" in log


def test_failing_build_fails_nix_build_with_the_log_tail(
    env: dict[str, str], builders: str
) -> None:
    salt = fresh_salt("fail")
    result = nix_build(
        [str(HOOKTEST), "-A", "failing", "--argstr", "salt", salt], env, builders=builders
    )
    assert result.returncode == 100
    assert f"FAIL-TAIL-{salt}" in result.stderr
    assert "failed with exit code 3" in result.stderr


@pytest.mark.parametrize(
    ("attr", "option", "words"),
    [
        ("silent", "max-silent-time", "of silence"),
        ("chatty", "timeout", "timed out"),
    ],
)
def test_time_limits_are_enforced_remotely(
    env: dict[str, str], builders: str, attr: str, option: str, words: str
) -> None:
    result = nix_build(
        [str(HOOKTEST), "-A", attr, "--argstr", "salt", fresh_salt(attr), "--option", option, "2"],
        env,
        builders=builders,
    )
    assert result.returncode == 101, result.stderr[-2000:]
    assert words in result.stderr


def test_sources_multiple_outputs_and_check(farm: Farm, env: dict[str, str], builders: str) -> None:
    salt = fresh_salt("multi")
    args = [str(HOOKTEST), "-A", "usesMulti", "--argstr", "salt", salt]
    [uses] = ok(nix_build(args, env, builders=builders))
    [multi_out] = [
        p for p in outputs_of_graph(uses, "-multi.drv") if re.search(r"/[0-9a-z]{32}-multi$", p)
    ]
    dev = Path(multi_out, "dev-link").resolve()
    assert (dev / "literal").read_text() == (FIXTURES / "drvs-input.txt").read_text()
    assert Path(uses, "inputs").read_text() == f"multi {salt}\nmulti-dev {salt}\n"
    places = farm.where_built([uses, multi_out, str(dev)])
    assert all(len(names) == 1 for names in places.values()), places
    # --check of a remotely built derivation goes through the hook too and must succeed.
    ok(nix_build([*args, "--check"], env, builders=builders))


def test_control_masters_are_detached_and_reused(
    local_farm: FarmFixture, env: dict[str, str], tmp_path: Path
) -> None:
    farm = local_farm.farm
    machines = _machines_file(local_farm, tmp_path / "machines", ["b2"])
    state = tmp_path / "state"
    env = {**env, "NIXDIST_STATE_DIR": str(state)}
    ok(
        nix_build(
            [str(HOOKTEST), "-A", "plain", "--argstr", "salt", fresh_salt("m1")],
            env,
            builders=f"@{machines}",
        )
    )
    [machine] = parse_machines(
        machines.read_text(), read_file=lambda _: None, default_system="x86_64-linux"
    )
    socket = ControlMasters(ssh_dir(state)).socket_path(target_for_machine(machine, env))
    master = _ssh_master(socket)
    # Detached: its own session, nothing of Nix's on its standard descriptors (ssh itself
    # puts stderr on /dev/null once it backgrounds; before that it goes to our log file).
    assert os.getsid(master) == master
    for fd in (0, 1, 2):
        assert Path(f"/proc/{master}/fd/{fd}").readlink() == Path("/dev/null")
    logins = _logins(farm, "b2")

    ok(
        nix_build(
            [str(HOOKTEST), "-A", "plain", "--argstr", "salt", fresh_salt("m2")],
            env,
            builders=f"@{machines}",
        )
    )
    assert _ssh_master(socket) == master
    assert _logins(farm, "b2") == logins, "the second build opened a new ssh connection"


def _ssh_master(socket: Path) -> int:
    """The pid of the one ssh master serving `socket`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv[0].endswith(b"ssh")
            and b"-M" in argv
            and f"-oControlPath={socket}".encode() in argv
        ):
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def _logins(farm: Farm, name: str) -> int:
    return farm.sshd_log(name).read_text(errors="replace").count("Accepted publickey")


def test_unsupported_store_uris_are_skipped_with_a_warning(
    local_farm: FarmFixture, env: dict[str, str], tmp_path: Path
) -> None:
    machines = tmp_path / "machines"
    machines.write_text(
        "s3://some-bucket x86_64-linux\nhttps://cache.example.org x86_64-linux\n"
        + local_farm.machines.read_text()
    )
    result = nix_build(
        [str(HOOKTEST), "-A", "plains", "--argstr", "salt", fresh_salt("skip")],
        env,
        builders=f"@{machines}",
    )
    ok(result)
    # Said once per Nix run, not once per hook process (one per derivation here: six).
    assert result.stderr.count("skipping builder 's3://some-bucket'") == 1
    assert result.stderr.count("skipping builder 'https://cache.example.org'") == 1
    assert "Traceback" not in result.stderr


def test_interrupted_build_leaves_nothing_behind(
    farm: Farm, env: dict[str, str], builders: str
) -> None:
    """Ctrl-C during a remote build: no hook left running, the remote build stops, no partial
    or unregistered path anywhere."""
    record = Path("/var/tmp") / f"nixdist-interrupt-{fresh_salt('record')}"
    salt = fresh_salt("interrupt")
    args = [
        str(HOOKTEST),
        "-A",
        "silent",
        "--argstr",
        "salt",
        salt,
        "--argstr",
        "record",
        str(record),
    ]
    [drv] = subprocess.run(
        ["nix-instantiate", *args], capture_output=True, text=True, check=True
    ).stdout.split()
    [out] = subprocess.run(
        ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
    ).stdout.split()
    realise = ["nix-store", "--realise", drv, "-j0", "--option", "substituters", ""]
    realise += ["--builders", builders, "--option", "build-hook", str(HOOK)]
    build = subprocess.Popen(
        realise,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: record.exists() and "start" in record.read_text(), "the remote build")
        [_, _, where, _] = record.read_text().split()
        build.send_signal(2)  # SIGINT, as Ctrl-C in a terminal
        build.communicate(timeout=HANG_GUARD_S)
    finally:
        build.kill()
        record.unlink(missing_ok=True)
    assert build.returncode != 0
    _wait_for(lambda: not _processes_with(b"nixdist-hook"), "the hook to go away")
    _wait_for(
        lambda: not any(salt.encode() in _cmdline(pid) for pid in farm.processes(where)),
        f"the build on {where} to stop",
    )
    assert out not in farm.builder_store_paths(where)
    assert not Path(out).exists()
    valid = subprocess.run(["nix-store", "--check-validity", out], capture_output=True, check=False)
    assert valid.returncode != 0
    verify = subprocess.run(
        ["nix-store", "--verify", "--check-contents"], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr[-2000:]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition`; the bound only keeps a broken run from hanging, it is not measured."""
    for _ in range(HANG_GUARD_S * 10):
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _processes_with(word: bytes) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and word in _cmdline(int(entry.name))
    ]


@pytest.mark.parametrize("master_first", [False, True], ids=["no-master", "live-master"])
def test_a_frozen_builder_is_skipped_not_waited_for(
    local_farm: FarmFixture, env: dict[str, str], tmp_path: Path, master_first: bool
) -> None:
    """A builder that stops answering (SIGSTOP) must not hold Nix's build loop: the hook gives
    up on it after NIXDIST_CONNECT_TIMEOUT and builds elsewhere. With a live ssh master the
    session opens fine and only nix-store's greeting never comes."""
    farm = local_farm.farm
    machines = _machines_file(local_farm, tmp_path / "machines", ["b2", "b1"])  # b2 first
    env = {**env, "NIXDIST_STATE_DIR": str(tmp_path / "state"), "NIXDIST_CONNECT_TIMEOUT": "2"}
    args = [str(HOOKTEST), "-A", "plain", "--argstr", "salt"]
    if master_first:
        [warm] = ok(nix_build([*args, fresh_salt("warm")], env, builders=f"@{machines}"))
        assert farm.where_built([warm])[warm] == ["b2"]
    farm.freeze("b2")
    try:
        result = nix_build([*args, fresh_salt("frozen")], env, builders=f"@{machines}")
    finally:
        farm.thaw("b2")
    [out] = ok(result)
    assert farm.where_built([out])[out] == ["b1"]
    assert f"cannot use 'ssh://{local_farm.alias('b2')}'" in result.stderr


def test_a_builder_that_failed_is_skipped_by_later_hooks_at_once(
    local_farm: FarmFixture, env: dict[str, str], tmp_path: Path
) -> None:
    """build-remote forgets a dead builder with the hook process that found it, so every
    build pays for it again (NixOS/nix#13513); nixdist's hooks share what they found."""
    farm = local_farm.farm
    machines = _machines_file(local_farm, tmp_path / "machines", ["b2", "b1"])  # b2 first
    state = tmp_path / "state"
    env = {**env, "NIXDIST_STATE_DIR": str(state), "NIXDIST_CONNECT_TIMEOUT": "2"}
    args = [str(HOOKTEST), "-A", "plain", "--argstr", "salt"]
    farm.stop("b2")
    try:
        first = nix_build([*args, fresh_salt("dead1")], env, builders=f"@{machines}")
        later = nix_build(
            [str(HOOKTEST), "-A", "plains", "--argstr", "salt", fresh_salt("dead2"), "-vvvvvv"],
            env,
            builders=f"@{machines}",
        )
    finally:
        farm.start("b2")
    ok(first)
    assert f"cannot use 'ssh://{local_farm.alias('b2')}'" in first.stderr
    outs = ok(later)
    assert all(names == ["b1"] for names in farm.where_built(outs).values())
    assert "cannot use" not in later.stderr  # six hooks, none tried b2 again
    assert f"ssh://{local_farm.alias('b2')}: down: " in later.stderr  # and they say why


def test_builders_use_substitutes_and_keep_failed_are_forwarded(
    farm: Farm, env: dict[str, str], builders: str
) -> None:
    # builders-use-substitutes: the builder is asked to substitute inputs itself (it has no
    # substituters here, so everything is still uploaded and the build must work).
    salt = fresh_salt("subst")
    args = [str(HOOKTEST), "-A", "usesMulti", "--argstr", "salt", salt]
    args += ["--option", "builders-use-substitutes", "true"]
    [out] = ok(nix_build(args, env, builders=builders))
    assert Path(out, "inputs").read_text() == f"multi {salt}\nmulti-dev {salt}\n"
    # keep-failed: the failed build's directory stays on the builder that ran it.
    salt = fresh_salt("keep")
    failed = nix_build(
        [str(HOOKTEST), "-A", "failing", "--argstr", "salt", salt, "--keep-failed"],
        env,
        builders=builders,
    )
    assert failed.returncode == 100
    [where] = re.findall(r"building failing on (\w+)", failed.stderr)
    kept = farm.run_in(where, ["sh", "-c", "ls -d /tmp/nix-build-failing.drv-*"], check=False)
    assert kept.returncode == 0, f"no kept build directory on {where}"
    farm.run_in(where, ["sh", "-c", "rm -rf /tmp/nix-build-failing.drv-*"])
