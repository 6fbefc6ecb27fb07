"""Outputs imported the way the hook does it, against the Nix installed here.

Nix holds every output's lock (``<path>.lock``) while its hook runs; since Nix 2.29 nothing
outside Nix's own process can import through that lock. `OutputImport` stages each output,
then moves it in place and registers it with ``nix-store --register-validity --hash-given``.
Here the test itself holds the lock, as the parent Nix would, and checks that the paths arrive
with exactly the path info the source store has (``nix-store --dump-db``, Nix's own rendering,
is also the golden vector for our encoder), that their contents verify, and that a bad stream
leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from nixdist.errors import LocalProtocolError, RemoteProtocolError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.local_store import parse_local_store
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.store import outputs
from nixdist.store.copy import copy_closure
from nixdist.store.narfs import dump_path
from nixdist.store.outputs import OutputImport
from nixdist.store.serve import ServeStore
from nixdist.wire.registration import encode_registration
from nixrun import HANG_GUARD_S

pytestmark = pytest.mark.integration


def _nix_store(store: str, *args: str) -> str:
    return subprocess.run(
        ["nix-store", "--store", store, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_GUARD_S,
    ).stdout


def _add(store: ServeStore, tree: Path, path: StorePath, refs: set[StorePath]) -> PathInfo:
    nar = b"".join(dump_path(tree))
    info = PathInfo(
        path=path,
        deriver=StorePath.parse("/nix/store/" + "d" * 32 + "-import-test.drv"),
        nar_hash=Hash.of(HashAlgo.SHA256, nar),
        references=frozenset(refs),
        nar_size=len(nar),
    )
    store.add_nar(info, [nar])
    return info


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, list[PathInfo]]:
    """A chroot store holding a dependency and two outputs (one refers to the other and to
    itself, one is a symlink-holding directory)."""
    uri = f"local?root={tmp_path / 'src'}"
    dep = StorePath.parse("/nix/store/" + "1" * 32 + "-dep")
    out = StorePath.parse("/nix/store/" + "2" * 32 + "-out")
    dev = StorePath.parse("/nix/store/" + "3" * 32 + "-out-dev")
    link = StorePath.parse("/nix/store/" + "4" * 32 + "-out-link")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "dep").write_text("a dependency\n")
    (tmp_path / "t" / "out").write_text(f"{dep}\n{out}\n")
    (tmp_path / "t" / "out").chmod(0o755)
    (tmp_path / "t" / "dev" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "dev" / "sub" / "x").write_text("x")
    (tmp_path / "t" / "dev" / "l").symlink_to(str(out))
    # An output that is itself a symlink, to a directory outside the store: never followed.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("not ours")
    (tmp_path / "t" / "link").symlink_to(tmp_path / "elsewhere")
    src = ServeStore.open_local(parse_local_store(uri), os.environ)
    try:
        infos = [
            _add(src, tmp_path / "t" / "dep", dep, set()),
            _add(src, tmp_path / "t" / "out", out, {dep, out}),
            _add(src, tmp_path / "t" / "dev", dev, {out}),
            _add(src, tmp_path / "t" / "link", link, set()),
        ]
    finally:
        src.close()
    return uri, infos


def _metadata(tree: Path) -> list[tuple[int, float]]:
    return [(p.stat().st_mode, p.stat().st_mtime) for p in (tree, *sorted(tree.iterdir()))]


def test_registration_encoding_is_what_nix_dumps(source: tuple[str, list[PathInfo]]) -> None:
    uri, infos = source
    for info in infos:
        assert encode_registration([info]).decode() == _nix_store(uri, "--dump-db", str(info.path))


def test_outputs_arrive_whole_while_their_locks_are_held(
    tmp_path: Path, source: tuple[str, list[PathInfo]]
) -> None:
    uri, infos = source
    dep, out, dev, link = (info.path for info in infos)
    dest = parse_local_store(f"local?root={tmp_path / 'dst'}")
    Path(dest.real_store_dir).mkdir(parents=True)
    # What the parent Nix does for the whole build: lock every output.
    locks = []
    for path in (out, dev, link):
        fd = os.open(dest.real_path(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        locks.append(fd)
    # A stale, invalid leftover at an output's path is replaced.
    Path(dest.real_path(dev)).mkdir()
    (Path(dest.real_path(dev)) / "stale").write_text("old")
    src = ServeStore.open_local(parse_local_store(uri), os.environ)
    local = ServeStore.open_local(dest, os.environ)
    into = OutputImport(local, dest, {out, dev, link}, source=src.name, environ=os.environ)
    outside = tmp_path / "elsewhere"  # where the symlink output points
    before = (
        outside.stat().st_mode,
        (outside / "f").stat().st_mode,
        (outside / "f").stat().st_mtime,
    )
    try:
        report = copy_closure(src, into, [dev, link])
        into.commit()
    finally:
        into.discard()
        src.close()
        local.close()
        for fd in locks:
            os.close(fd)
    assert set(report.copied) == {dep, out, dev, link}
    after = (
        outside.stat().st_mode,
        (outside / "f").stat().st_mode,
        (outside / "f").stat().st_mtime,
    )
    assert after == before  # the link's target was not made canonical
    for path in (dep, out, dev, link):
        assert _nix_store(dest.uri, "--dump-db", str(path)) == _nix_store(
            uri, "--dump-db", str(path)
        )
    _nix_store(dest.uri, "--verify-path", str(out), str(dev), str(dep))
    assert not (Path(dest.real_path(dev)) / "stale").exists()
    assert [p.name for p in Path(dest.real_store_dir).iterdir() if p.name.startswith(".nix")] == []


def test_a_corrupt_stream_leaves_nothing(
    tmp_path: Path, source: tuple[str, list[PathInfo]]
) -> None:
    uri, infos = source
    out_info = infos[1]
    dest = parse_local_store(f"local?root={tmp_path / 'dst'}")
    Path(dest.real_store_dir).mkdir(parents=True)
    src = ServeStore.open_local(parse_local_store(uri), os.environ)
    local = ServeStore.open_local(dest, os.environ)
    into = OutputImport(local, dest, {out_info.path}, source="builder", environ=os.environ)
    try:
        nar = bytearray(b"".join(src.dump(out_info.path)))
        nar[-20] ^= 0xFF  # inside the file's contents: still a well-formed NAR
        with pytest.raises(RemoteProtocolError, match="does not match its hash") as err:
            into.add_nar(out_info, [bytes(nar)])
        assert err.value.peer == "builder"  # the sender's fault: the hook fails over
    finally:
        into.discard()
        src.close()
        local.close()
    assert [p.name for p in Path(dest.real_store_dir).iterdir() if p.name != ".links"] == []


@pytest.mark.parametrize(
    ("registrar", "words"),
    [
        ("echo 'error: database is broken' >&2; exit 1", "database is broken"),
        ("exec sleep 600", "made no progress"),
    ],
)
def test_outputs_that_cannot_be_registered_are_not_left_behind(
    tmp_path: Path,
    source: tuple[str, list[PathInfo]],
    monkeypatch: pytest.MonkeyPatch,
    registrar: str,
    words: str,
) -> None:
    """The keeper's nix-store fails, or hangs past the bound: no output stays in the store."""
    monkeypatch.setattr(outputs, "KEEPER_TIMEOUT_S", 2.0)
    uri, infos = source
    out_info = infos[1]
    fake = tmp_path / "nix-store"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\n{registrar}\n")
    fake.chmod(0o755)
    dest = parse_local_store(f"local?root={tmp_path / 'dst'}")
    Path(dest.real_store_dir).mkdir(parents=True)
    src = ServeStore.open_local(parse_local_store(uri), os.environ)
    local = ServeStore.open_local(dest, os.environ)
    into = OutputImport(
        local, dest, {out_info.path}, source="b", environ=os.environ, nix_store=str(fake)
    )
    try:
        into.add_nar(infos[0], src.dump(infos[0].path))  # a dependency: added the usual way
        into.add_nar(out_info, src.dump(out_info.path))
        with pytest.raises(LocalProtocolError, match=words):
            into.commit()
    finally:
        into.discard()
        src.close()
        local.close()
    left = {p.name for p in Path(dest.real_store_dir).iterdir()} - {".links"}
    assert left == {infos[0].path.basename}
