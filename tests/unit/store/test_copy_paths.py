"""`copy_paths` between two fake stores: only what is missing moves, references first, and
what the destination receives is never marked as built there."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.store.copy import copy_paths

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def path(n: int) -> StorePath:
    return StorePath.parse(f"/nix/store/{n:032d}-p{n}")


class Store:
    def __init__(self, name: str, infos: Iterable[PathInfo] = ()) -> None:
        self.name = name
        self.infos = {i.path: i for i in infos}
        self.received: list[PathInfo] = []

    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        return {p: self.infos[p] for p in paths if p in self.infos}

    def query_closure(self, paths: Iterable[StorePath]) -> frozenset[StorePath]:
        raise NotImplementedError

    def dump(self, path: StorePath) -> Iterator[bytes]:
        yield f"nar of {path}".encode()

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]:
        del lock, substitute
        return frozenset(p for p in paths if p in self.infos)

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        assert b"".join(nar) == f"nar of {info.path}".encode()
        assert all(r in self.infos for r in info.references if r != info.path)
        self.infos[info.path] = info
        self.received.append(info)


def info(n: int, *refs: int, ultimate: bool = False) -> PathInfo:
    return PathInfo(
        path=path(n),
        deriver=None,
        nar_hash=Hash.of(HashAlgo.SHA256, b"%d" % n),
        references=frozenset(path(r) for r in refs),
        nar_size=10 + n,
        ultimate=ultimate,
    )


def test_only_the_missing_paths_move_references_first_and_not_as_built_there() -> None:
    src = Store("ssh-ng://b1", [info(1, ultimate=True), info(2, 1, ultimate=True), info(3, 2)])
    dst = Store("ssh-ng://b2", [info(1)])
    report = copy_paths(src, dst, [path(1), path(2), path(3)])
    assert report.copied == (path(2), path(3))
    assert report.already_valid == 1
    assert [i.path for i in dst.received] == [path(2), path(3)]
    assert not any(i.ultimate for i in dst.received)  # b2 did not build them
    assert dst.received[0] == dataclasses.replace(src.infos[path(2)], ultimate=False)
