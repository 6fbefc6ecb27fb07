"""Slot locks in the current-load directory, shared with build-remote (nix-protocols.md §2.5-2.7).

Other lock holders are real processes: a tiny Python child using flock(2) directly, a child
using nixdist itself, and util-linux flock(1), which is a different program using flock(2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.model.machines import Machine
from nixdist.model.request import BuildRequest
from nixdist.scheduler import Accept, LocalCapabilities, MachineState, choose
from nixdist.state import SlotDirectory, SlotLease, default_current_load_dir, escape_uri

if TYPE_CHECKING:
    from collections.abc import Iterator

HOLD_WITH_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""

HOLD_WITH_NIXDIST = """
import sys
from nixdist.model.machines import Machine
from nixdist.state import SlotDirectory
m = Machine(uri=sys.argv[2], systems=("x86_64-linux",), max_jobs=int(sys.argv[3]))
probe = SlotDirectory(sys.argv[1]).try_slot(m)
print(probe.load, probe.lease.slot, flush=True)
sys.stdin.read()
"""


def builder(uri: str = "ssh://b1", max_jobs: int = 2) -> Machine:
    return Machine(uri=uri, systems=("x86_64-linux",), max_jobs=max_jobs)


@contextlib.contextmanager
def holder(*argv: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child that takes a lock, says one line once it holds it, and lives until stdin ends.

    Yields the process and that first line.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def python_holder(
    script: str, *args: str
) -> contextlib.AbstractContextManager[tuple[subprocess.Popen[str], str]]:
    return holder(sys.executable, "-c", script, *args)


def end(proc: subprocess.Popen[str]) -> None:
    """Let the child exit on its own (end of stdin) and wait for it."""
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait() == 0


@pytest.fixture
def slots(tmp_path: Path) -> SlotDirectory:
    return SlotDirectory(tmp_path / "current-load")


def release(*leases: SlotLease | None) -> None:
    for lease in leases:
        if lease is not None:
            lease.release()


# --- names and location ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "escaped"),
    [
        ("ssh://builder1", "ssh:__builder1"),
        ("ssh://nix@b1:2222", "ssh:__nix@b1:2222"),
        ("ssh-ng://b?remote-store=/mnt/x", "ssh-ng:__b?remote-store=_mnt_x"),
        ("local", "local"),
    ],
)
def test_escape_uri(uri: str, escaped: str) -> None:
    assert escape_uri(uri) == escaped


def test_file_names_are_nix_s(slots: SlotDirectory) -> None:
    """Names seen on a real system: main-lock, ssh:__builder1-0 ... (build-remote's
    ssh:__builder1.upload-lock is not used: uploads are not serialised)."""
    m = builder("ssh://builder1", max_jobs=3)
    with slots.main_lock():
        probe = slots.try_slot(m)
    release(probe.lease)
    assert sorted(p.name for p in slots.path.iterdir()) == [
        "main-lock",
        "ssh:__builder1-0",
        "ssh:__builder1-1",
        "ssh:__builder1-2",
    ]
    for p in slots.path.iterdir():
        assert p.stat().st_size == 0
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0  # 0600 less the umask


@pytest.mark.parametrize(
    ("environ", "state_dir", "expected"),
    [
        ({}, None, "/nix/var/nix/current-load"),
        ({"NIX_STATE_DIR": "/tmp/s"}, None, "/tmp/s/current-load"),
        ({"NIX_STATE_DIR": "/tmp/s"}, Path("/x/nix/var/nix"), "/x/nix/var/nix/current-load"),
        ({"NIX_CURRENT_LOAD": "/run/load", "NIX_STATE_DIR": "/tmp/s"}, None, "/run/load"),
        ({"NIX_CURRENT_LOAD": "/run/load"}, Path("/x"), "/run/load"),
        ({"NIX_CURRENT_LOAD": ""}, None, "/nix/var/nix/current-load"),
    ],
)
def test_default_current_load_dir(
    environ: dict[str, str], state_dir: Path | None, expected: str
) -> None:
    assert default_current_load_dir(state_dir=state_dir, environ=environ) == Path(expected)
    assert SlotDirectory.default(state_dir=state_dir, environ=environ).path == Path(expected)


def test_directory_is_created_and_errors_are_ignored(tmp_path: Path) -> None:
    slots = SlotDirectory(tmp_path / "current-load")
    slots.ensure()
    slots.ensure()
    assert slots.path.is_dir()
    SlotDirectory(tmp_path / "missing" / "current-load").ensure()  # no error, like Nix
    # probing creates the directory too
    fresh = SlotDirectory(tmp_path / "fresh")
    release(fresh.try_slot(builder()).lease)
    assert fresh.path.is_dir()


# --- probing within one process ------------------------------------------------------------------


def test_try_slot_counts_leases_and_keeps_one_free_slot(slots: SlotDirectory) -> None:
    m = builder(max_jobs=2)
    first = slots.try_slot(m)
    assert (first.load, first.free_slot) == (0, True)
    assert first.lease is not None
    assert first.lease.slot == 0
    # a second open in the same process is a different open file description: it counts
    second = slots.try_slot(m)
    assert second.load == 1
    assert second.lease is not None
    assert second.lease.slot == 1
    third = slots.try_slot(m)
    assert (third.load, third.lease) == (2, None)
    first.lease.release()
    again = slots.try_slot(m)
    assert again.load == 1
    assert again.lease is not None
    assert again.lease.slot == 0
    release(second.lease, again.lease)


def test_probe_unlocks_the_free_slots_it_does_not_keep(slots: SlotDirectory) -> None:
    m = builder(max_jobs=3)
    probe = slots.try_slot(m)
    assert probe.lease is not None
    assert probe.lease.slot == 0
    assert slots.count_loads([m]) == [1]
    release(probe.lease)
    assert slots.count_loads([m]) == [0]


def test_zero_jobs_machine_has_no_slots(slots: SlotDirectory) -> None:
    probe = slots.try_slot(builder(max_jobs=0))
    assert (probe.load, probe.lease) == (0, None)
    assert not slots.path.exists() or list(slots.path.iterdir()) == []


def test_probe_error_releases_the_slot_it_took(slots: SlotDirectory) -> None:
    m = builder(max_jobs=2)
    slots.ensure()
    slots.slot_path(m.uri, 1).mkdir()  # slot 1 cannot be opened
    with pytest.raises(IsADirectoryError):
        slots.try_slot(m)
    slots.slot_path(m.uri, 1).rmdir()
    assert slots.count_loads([m]) == [0]
    assert repr(slots) == f"SlotDirectory({str(slots.path)!r})"


def test_lease_lifecycle(slots: SlotDirectory) -> None:
    lease = slots.try_slot(builder(max_jobs=1)).lease
    assert lease is not None
    assert repr(lease) == "<SlotLease ssh:__b1-0 held>"
    assert not os.get_inheritable(lease.fileno())  # O_CLOEXEC: ssh masters never inherit it
    with lease:
        assert lease.held
    assert not _held(lease)
    assert repr(lease) == "<SlotLease ssh:__b1-0 released>"
    lease.release()  # twice is fine
    with pytest.raises(ValueError, match="released"):
        lease.fileno()


def test_touch_sets_mtime_to_now(slots: SlotDirectory) -> None:
    lease = slots.try_slot(builder(max_jobs=1)).lease
    assert lease is not None
    os.utime(lease.path, (0, 0))
    lease.touch()
    assert lease.path.stat().st_mtime > 0
    lease.release()


def test_probe_feeds_choose(slots: SlotDirectory) -> None:
    """The hook's sequence: probe under the main lock, choose, keep one lease, free the rest."""
    a, b = builder("ssh://a", max_jobs=1), builder("ssh://b", max_jobs=2)
    busy = slots.try_slot(a).lease
    with slots.main_lock():
        probes = [slots.try_slot(m) for m in (a, b)]
        assert [p.free_slot for p in probes] == [False, True]
        decision = choose(
            BuildRequest(drv_path="x.drv", system="x86_64-linux", am_willing=False),
            LocalCapabilities(system="aarch64-linux"),
            [MachineState(machine=p.machine, load=p.load, free_slot=p.free_slot) for p in probes],
        )
        assert isinstance(decision, Accept)
        assert decision.machine == b
        kept = probes[decision.index].lease
        release(*(p.lease for p in probes if p.lease is not kept))
    assert slots.count_loads([a, b]) == [1, 1]
    release(busy, kept)
    assert slots.count_loads([a, b]) == [0, 0]


# --- other processes -----------------------------------------------------------------------------


def test_slot_locked_by_another_process_counts_as_load(slots: SlotDirectory) -> None:
    m = builder(max_jobs=2)
    slots.ensure()
    with python_holder(HOLD_WITH_FLOCK, str(slots.slot_path(m.uri, 0))) as (child, line):
        assert line == "locked"
        probe = slots.try_slot(m)
        assert probe.load == 1
        assert probe.lease is not None
        assert probe.lease.slot == 1
        release(probe.lease)
        end(child)
    probe = slots.try_slot(m)
    assert probe.load == 0
    release(probe.lease)


def test_lease_is_released_when_its_holder_dies(slots: SlotDirectory) -> None:
    m = builder(max_jobs=2)
    with python_holder(HOLD_WITH_NIXDIST, str(slots.path), m.uri, "2") as (child, line):
        assert line == "0 0"
        assert slots.count_loads([m]) == [1]
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert slots.count_loads([m]) == [0]


def test_leases_of_two_nixdist_processes_add_up(slots: SlotDirectory) -> None:
    m = builder(max_jobs=3)
    args = (str(slots.path), m.uri, "3")
    with (
        python_holder(HOLD_WITH_NIXDIST, *args) as (one, one_line),
        python_holder(HOLD_WITH_NIXDIST, *args) as (two, two_line),
    ):
        assert (one_line, two_line) == ("0 0", "1 1")
        assert slots.count_loads([m]) == [2]
        end(one)
        assert slots.count_loads([m]) == [1]
        end(two)
    assert slots.count_loads([m]) == [0]


FLOCK = shutil.which("flock")
needs_flock = pytest.mark.skipif(FLOCK is None, reason="util-linux flock(1) not installed")


@needs_flock
def test_slot_locked_by_util_linux_flock_counts_as_load(slots: SlotDirectory) -> None:
    """Another program using flock(2) (as build-remote does) shares our accounting."""
    assert FLOCK is not None
    m = builder(max_jobs=1)
    slots.ensure()
    path = str(slots.slot_path(m.uri, 0))
    with holder(FLOCK, "-n", path, "sh", "-c", "echo locked; exec cat") as (child, line):
        assert line == "locked"
        assert slots.try_slot(m).load == 1
        end(child)
    probe = slots.try_slot(m)
    assert probe.load == 0
    assert probe.lease is not None
    # and the other way round: flock(1) cannot take the slot we hold
    assert subprocess.run([FLOCK, "-n", path, "true"], check=False).returncode == 1
    probe.lease.release()
    assert subprocess.run([FLOCK, "-n", path, "true"], check=False).returncode == 0


@needs_flock
def test_main_lock_excludes_other_programs(slots: SlotDirectory) -> None:
    assert FLOCK is not None
    main = str(slots.path / "main-lock")
    with slots.main_lock():
        assert subprocess.run([FLOCK, "-n", main, "true"], check=False).returncode == 1
    assert subprocess.run([FLOCK, "-n", main, "true"], check=False).returncode == 0


def _held(lease: SlotLease) -> bool:
    """Asked anew (a check after `assert lease.held` that mypy would take as settled)."""
    return lease.held
