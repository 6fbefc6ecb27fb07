"""Upload claims: exclusive per path across processes, "uploaded since" markers, and the
claimed copy loop (`copy._send_claimed`) against a fake destination."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.model.hashes import Hash
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.store import copy
from nixdist.store.claims import UploadClaims
from nixdist.store.closure import dependency_order

if TYPE_CHECKING:
    from collections.abc import Iterable


def path(i: int) -> StorePath:
    return StorePath.from_basename(f"{i:032d}"[:32].replace("0", "a") + f"-p{i}")


def info(i: int, refs: Iterable[int] = ()) -> PathInfo:
    return PathInfo(
        path=path(i),
        deriver=None,
        nar_hash=Hash.parse("sha256:" + "0" * 52),
        references=frozenset(path(r) for r in refs),
        nar_size=100 + i,
    )


def test_a_claim_excludes_every_other_claimant_until_released(tmp_path: Path) -> None:
    claims = UploadClaims(tmp_path / "b1")
    first = claims.try_claim(path(1))
    assert first is not None
    assert claims.try_claim(path(1)) is None  # a second open file, same process: excluded
    assert claims.try_claim(path(2)) is not None  # other paths are free
    held = subprocess.run(
        [sys.executable, "-c", _TRY, str(tmp_path / "b1" / path(1).basename)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert held.stdout == "held\n"  # and another process is excluded too
    first.release()
    again = claims.try_claim(path(1))
    assert again is not None
    again.release()


_TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def test_uploaded_since_is_told_by_the_previous_holder(tmp_path: Path) -> None:
    claims = UploadClaims(tmp_path)
    before = time.time()
    claim = claims.try_claim(path(1))
    assert claim is not None
    assert not claim.uploaded_since(0.0)  # never uploaded
    claim.mark_uploaded()
    claim.release()
    after = claims.try_claim(path(1))
    assert after is not None
    assert after.uploaded_since(before)
    assert not after.uploaded_since(time.time() + 60)  # an older upload than we asked about
    after.release()
    (tmp_path / path(1).basename).write_text("garbage")
    damaged = claims.try_claim(path(1))
    assert damaged is not None
    assert not damaged.uploaded_since(0.0)
    damaged.release()


def test_wait_returns_when_the_holder_lets_go(tmp_path: Path) -> None:
    claims = UploadClaims(tmp_path)
    claim = claims.try_claim(path(1))
    assert claim is not None
    released = threading.Event()

    def let_go() -> None:
        time.sleep(0.1)
        released.set()
        claim.release()

    threading.Thread(target=let_go).start()
    claims.wait(path(1))
    assert released.is_set()


def test_prune_removes_old_claim_files_once_an_hour(tmp_path: Path) -> None:
    claims = UploadClaims(tmp_path)
    for i in (1, 2):
        c = claims.try_claim(path(i))
        assert c is not None
        c.release()
    old = time.time() - 2 * 86400
    os.utime(tmp_path / path(1).basename, (old, old))
    assert claims.prune() == 1
    assert not (tmp_path / path(1).basename).exists()
    assert (tmp_path / path(2).basename).exists()
    os.utime(tmp_path / path(2).basename, (old, old))
    assert claims.prune() == 0  # pruned less than an hour ago
    assert claims.prune(now=time.time() + 7200) == 1


class FakeDestination:
    """Just what `_send_claimed` asks of the destination: which paths are valid now."""

    def __init__(self) -> None:
        self.valid: set[StorePath] = set()
        self.lock = threading.Lock()

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False
    ) -> frozenset[StorePath]:
        assert lock
        with self.lock:
            return frozenset(p for p in paths if p in self.valid)


def _chain_and_leaves(n: int) -> list[PathInfo]:
    """Path 0, then leaves 1..n-1 each referring to 0 and to the previous leaf every third."""
    infos = [info(0)]
    infos += [info(i, [0] + ([i - 1] if i % 3 == 0 else [])) for i in range(1, n)]
    return infos


def test_paths_another_process_is_sending_are_skipped_and_waited_for(tmp_path: Path) -> None:
    dst = FakeDestination()
    other = UploadClaims(tmp_path)
    mine = UploadClaims(tmp_path)
    infos = _chain_and_leaves(7)
    # another hook is sending path 2 right now; it finishes a moment later
    busy = other.try_claim(path(2))
    assert busy is not None
    sent: list[StorePath] = []

    def send(i: PathInfo) -> None:
        assert all(r in dst.valid for r in i.references if r != i.path), "reference not sent"
        sent.append(i.path)
        with dst.lock:
            dst.valid.add(i.path)

    def finish_other() -> None:
        time.sleep(0.2)
        with dst.lock:
            dst.valid.add(path(2))
        busy.mark_uploaded()
        busy.release()

    threading.Thread(target=finish_other).start()
    copy._send_claimed(list(infos), dst, mine, send, asked=time.time())  # type: ignore[arg-type]
    assert path(2) not in sent
    assert sorted(sent) == sorted(i.path for i in infos if i.path != path(2))
    # path 3 refers to 2, so it went only after 2 arrived: last
    assert sent[-1] == path(3)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 25), workers=st.integers(2, 4), seed=st.integers(0, 1000))
def test_concurrent_copies_send_each_path_exactly_once(n: int, workers: int, seed: int) -> None:
    """Several copies of one set at once (threads: flock excludes separate opens alike)."""
    rng = random.Random(seed)
    infos = [info(i, [r for r in range(i) if rng.random() < 0.2]) for i in range(n)]
    order = dependency_order({i.path: i for i in infos})
    dst = FakeDestination()
    sent: list[StorePath] = []
    sent_lock = threading.Lock()

    def send(i: PathInfo) -> None:
        with dst.lock:
            assert all(r in dst.valid for r in i.references if r != i.path)
        time.sleep(rng.random() / 1000)
        with sent_lock:
            sent.append(i.path)
        with dst.lock:
            dst.valid.add(i.path)

    with tempfile.TemporaryDirectory() as directory:
        asked = time.time()
        threads = [
            threading.Thread(
                target=copy._send_claimed,
                args=(list(order), dst, UploadClaims(Path(directory)), send),
                kwargs={"asked": asked},
            )
            for _ in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(sent) == sorted(i.path for i in infos)
