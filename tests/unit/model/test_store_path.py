"""StorePath: parse tables, error tables, Nix's order, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ParseError
from nixdist.model import nixbase32
from nixdist.model.store_path import (
    MAX_NAME_LEN,
    STORE_DIR,
    HashPartError,
    InvalidNameError,
    MissingDashError,
    NotInStoreError,
    StorePath,
    StorePathError,
    check_name,
)

HASH = "jdy5z8vs1lh8b7s6xkidfgn2xw6d63bf"
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-._?="


def test_parse_fields() -> None:
    path = StorePath.parse(f"/nix/store/{HASH}-hooktest-a1.drv")
    assert path.store_dir == STORE_DIR
    assert path.hash_part == HASH
    assert path.name == "hooktest-a1.drv"
    assert path.basename == f"{HASH}-hooktest-a1.drv"
    assert str(path) == f"/nix/store/{HASH}-hooktest-a1.drv"
    assert path.is_derivation
    assert path.drv_name == "hooktest-a1"


def test_not_a_derivation() -> None:
    path = StorePath.parse(f"/nix/store/{HASH}-hello-2.12")
    assert not path.is_derivation
    with pytest.raises(ValueError, match="not a derivation"):
        _ = path.drv_name


def test_other_store_dir() -> None:
    path = StorePath.parse(f"/tmp/store/{HASH}-x", store_dir="/tmp/store")
    assert str(path) == f"/tmp/store/{HASH}-x"
    assert path != StorePath.parse(f"/nix/store/{HASH}-x")


def test_from_basename() -> None:
    assert StorePath.from_basename(f"{HASH}-x") == StorePath.parse(f"/nix/store/{HASH}-x")
    with pytest.raises(NotInStoreError):
        StorePath.from_basename(f"a/{HASH}-x")


def test_name_chars_and_lengths() -> None:
    assert StorePath.parse(f"/nix/store/{HASH}-{NAME_CHARS}").name == NAME_CHARS
    assert StorePath.parse(f"/nix/store/{HASH}-{'a' * MAX_NAME_LEN}").name == "a" * 211
    assert StorePath.parse(f"/nix/store/{HASH}--").name == "-"
    assert StorePath.parse(f"/nix/store/{HASH}-.x").name == ".x"  # allowed in 2.8


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (f"/nix/stor/{HASH}-x", NotInStoreError, "not in the store"),
        (f"nix/store/{HASH}-x", NotInStoreError, "not in the store"),
        (f"/nix/store/{HASH}-x/bin", NotInStoreError, "not directly inside"),
        (f"/nix/store//{HASH}-x", NotInStoreError, "not directly inside"),
        ("/nix/store/abc-x", HashPartError, "too short"),
        ("/nix/store/", HashPartError, "too short"),
        (f"/nix/store/{HASH[:5]}e{HASH[6:]}-x", HashPartError, "'e' at position 5"),
        (f"/nix/store/{HASH[:31]}T-x", HashPartError, "'T' at position 31"),
        (f"/nix/store/{HASH}", MissingDashError, "no '-'"),
        (f"/nix/store/{HASH}_x", MissingDashError, "no '-'"),
        (f"/nix/store/{HASH}-", InvalidNameError, "empty name"),
        (f"/nix/store/{HASH}-a b", InvalidNameError, "' ' at position 1"),
        (f"/nix/store/{HASH}-é", InvalidNameError, "'é' at position 0"),
        (f"/nix/store/{HASH}-{'a' * 212}", InvalidNameError, "212 characters, more than 211"),
    ],
)
def test_parse_errors(text: str, error: type[StorePathError], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        StorePath.parse(text)
    assert isinstance(info.value, ParseError)


def test_check_name() -> None:
    check_name("hello-2.12")
    with pytest.raises(InvalidNameError, match="'/' at position 1"):
        check_name("a/b")


def test_order_is_by_basename() -> None:
    a = StorePath.parse(f"/nix/store/0{HASH[1:]}-z")
    b = StorePath.parse(f"/nix/store/1{HASH[1:]}-a")
    assert a < b
    assert a <= b
    assert b > a
    assert b >= a
    assert sorted([b, a]) == [a, b]
    assert a.sort_key < b.sort_key


def test_hashable() -> None:
    path = StorePath.parse(f"/nix/store/{HASH}-x")
    assert {path, StorePath.parse(f"/nix/store/{HASH}-x")} == {path}


store_paths = st.builds(
    lambda digest, name: f"/nix/store/{nixbase32.encode(digest)}-{name}",
    st.binary(min_size=20, max_size=20),
    st.text(NAME_CHARS, min_size=1, max_size=MAX_NAME_LEN),
)


@given(store_paths)
def test_round_trip(text: str) -> None:
    path = StorePath.parse(text)
    assert str(path) == text
    assert StorePath.parse(str(path)) == path
    assert StorePath.from_basename(path.basename) == path


@given(st.lists(store_paths, min_size=2, max_size=5))
def test_sorted_matches_basename_order(texts: list[str]) -> None:
    paths = [StorePath.parse(t) for t in texts]
    assert [str(p) for p in sorted(paths)] == sorted(texts)


@given(st.text(max_size=60))
def test_parse_never_crashes(text: str) -> None:
    try:
        path = StorePath.parse(text)
    except StorePathError:
        return
    assert str(path) == text
