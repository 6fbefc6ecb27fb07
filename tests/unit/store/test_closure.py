from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import RemoteProtocolError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.store.closure import dependency_order

_HASH = Hash(algo=HashAlgo.SHA256, digest=bytes(32))


def path(n: int) -> StorePath:
    return StorePath.parse(f"/nix/store/{str(n % 10) * 32}-p{n}")


def info(n: int, *refs: int) -> PathInfo:
    return PathInfo(
        path=path(n),
        deriver=None,
        nar_hash=_HASH,
        references=frozenset(path(r) for r in refs),
        nar_size=8,
    )


def order(*infos: PathInfo) -> list[StorePath]:
    return [i.path for i in dependency_order({i.path: i for i in infos})]


def test_references_come_first() -> None:
    assert order(info(1, 2), info(2, 3), info(3)) == [path(3), path(2), path(1)]


def test_self_references_and_outside_paths_are_ignored() -> None:
    assert order(info(1, 1, 2, 9), info(2, 2)) == [path(2), path(1)]


def test_a_cycle_is_an_error() -> None:
    with pytest.raises(RemoteProtocolError, match="cycle"):
        order(info(1, 2), info(2, 1))


def test_a_long_chain_does_not_recurse() -> None:
    chain = [info(n, n + 1) for n in range(5000)] + [info(5000)]
    assert order(*chain) == [path(n) for n in range(5000, -1, -1)]


@given(st.dictionaries(st.integers(0, 40), st.sets(st.integers(0, 40)), max_size=30))
def test_any_acyclic_graph_is_ordered_deterministically(graph: dict[int, set[int]]) -> None:
    # Keep only edges to lower numbers: acyclic by construction.
    infos = [info(n, *(r for r in refs if r < n)) for n, refs in graph.items()]
    result = order(*infos)
    assert sorted(result) == sorted(i.path for i in infos)
    place = {p: k for k, p in enumerate(result)}
    for i in infos:
        for ref in i.references:
            if ref in place and ref != i.path:
                assert place[ref] < place[i.path]
    assert order(*reversed(infos)) == result
