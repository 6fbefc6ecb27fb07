"""PathInfo: a plain value; references are a set sent in basename order."""

from __future__ import annotations

import dataclasses

import pytest

from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath


def _path(first: str, name: str) -> StorePath:
    return StorePath.parse(f"/nix/store/{first * 32}-{name}")


def test_fields_defaults_and_order() -> None:
    info = PathInfo(
        path=_path("5", "x"),
        deriver=_path("6", "x.drv"),
        nar_hash=Hash.parse("sha256:0x6gwcszhf95qg9gy320zn0kcghsl5zf5khyzbrx7jca81dllrav"),
        references=frozenset({_path("z", "a"), _path("0", "z"), _path("5", "x")}),
        nar_size=120,
    )
    assert info.registration_time == 0
    assert not info.ultimate
    assert info.sigs == ()
    assert info.ca == ""
    assert info.nar_hash.algo is HashAlgo.SHA256
    assert [p.name for p in info.sorted_references()] == ["z", "x", "a"]
    assert info == dataclasses.replace(info)
    assert hash(info) == hash(dataclasses.replace(info))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.nar_size = 1  # type: ignore[misc]
