"""Waiting for a file lock ends, with the lock named, when its holder never lets go."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from nixdist.transport.locks import LockTimeoutError, flock_within

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A lock file another process holds exclusively until the test ends."""
    path = tmp_path / "main-lock"
    path.touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX);"
                " print('held', flush=True); sys.stdin.read()"
            ),
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    try:
        yield path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()


def test_a_held_lock_is_given_up_on_with_its_name(held: Path) -> None:
    fd = os.open(held, os.O_RDWR)
    try:
        with pytest.raises(LockTimeoutError, match=r"waited 0.2 s for the slot lock: another"):
            flock_within(fd, timeout_s=0.2, what="the slot lock")
        with pytest.raises(LockTimeoutError):
            flock_within(fd, timeout_s=0.1, what="x", shared=True)
    finally:
        os.close(fd)


def test_a_free_lock_is_taken_and_shared_locks_share(tmp_path: Path) -> None:
    path = tmp_path / "claim"
    path.touch()
    first, second = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        flock_within(first, timeout_s=0, what="x", shared=True)
        flock_within(second, timeout_s=0, what="x", shared=True)
        third = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(third)
    finally:
        os.close(first)
        os.close(second)
