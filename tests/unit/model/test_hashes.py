"""Hash: every textual form Nix uses parses, renders, and round-trips; bad input is rejected."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ParseError
from nixdist.model.hashes import Hash, HashAlgo, HashError

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
ABC_SHA256_NIX32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
ABC_SHA256_B64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


def test_of_and_renderers() -> None:
    digest = Hash.of(HashAlgo.SHA256, b"abc")
    assert digest.to_base16() == ABC_SHA256
    assert digest.to_nix32() == ABC_SHA256_NIX32
    assert digest.to_base64() == ABC_SHA256_B64
    assert digest.to_sri() == f"sha256-{ABC_SHA256_B64}"
    assert digest.render() == f"sha256:{ABC_SHA256_NIX32}"
    assert str(digest) == digest.render()
    assert digest.render_base16() == f"sha256:{ABC_SHA256}"


@pytest.mark.parametrize(
    ("text", "algo"),
    [
        (f"sha256:{ABC_SHA256_NIX32}", None),
        (f"sha256:{ABC_SHA256}", None),
        (f"sha256:{ABC_SHA256.upper()}", None),
        (f"sha256:{ABC_SHA256_B64}", None),
        (f"sha256-{ABC_SHA256_B64}", None),
        (ABC_SHA256_NIX32, HashAlgo.SHA256),
        (ABC_SHA256, HashAlgo.SHA256),
        (ABC_SHA256_B64, HashAlgo.SHA256),
        (f"sha256:{ABC_SHA256}", HashAlgo.SHA256),
        (f"sha256-{ABC_SHA256_B64}", HashAlgo.SHA256),
    ],
)
def test_parse_forms(text: str, algo: HashAlgo | None) -> None:
    assert Hash.parse(text, algo) == Hash.of(HashAlgo.SHA256, b"abc")


@pytest.mark.parametrize("algo", list(HashAlgo))
def test_sizes(algo: HashAlgo) -> None:
    assert len(Hash.of(algo, b"").digest) == algo.size


@given(st.sampled_from(list(HashAlgo)), st.data())
def test_round_trip_all_forms(algo: HashAlgo, data: st.DataObject) -> None:
    digest = Hash(algo=algo, digest=data.draw(st.binary(min_size=algo.size, max_size=algo.size)))
    for bare in (digest.to_base16(), digest.to_nix32(), digest.to_base64()):
        assert Hash.parse(bare, algo) == digest
        assert Hash.parse(f"{algo}:{bare}") == digest
    assert Hash.parse(digest.to_sri()) == digest
    assert Hash.parse(digest.render()) == digest
    assert Hash.parse(digest.render_base16()) == digest


@pytest.mark.parametrize(
    ("text", "algo", "message"),
    [
        (ABC_SHA256, None, "does not name its algorithm"),
        (f"sha256:{ABC_SHA256}", HashAlgo.SHA1, "is not a sha1 hash"),
        (f"sha384:{ABC_SHA256}", None, "unknown hash algorithm 'sha384'"),
        (f"sha256:{ABC_SHA256[:-1]}", None, "wrong length"),
        (f"sha256:{ABC_SHA256[:-1]}g", None, "invalid base16"),
        (f"sha256:{ABC_SHA256[:-2]} 0", None, "invalid base16"),
        (f"sha256:{ABC_SHA256_NIX32[:-1]}e", None, "invalid nix32"),
        (f"sha256:{'z' * 52}", None, "non-zero bits"),
        (f"sha256:{ABC_SHA256_B64[:-2]}!=", None, "invalid base64"),
        (f"sha256:{ABC_SHA256_B64[:-2]}1=", None, "non-canonical base64"),
        (f"sha256-{ABC_SHA256}", None, "SRI hash .* wrong length"),
        (f"sha256-{ABC_SHA256_NIX32}", None, "SRI hash .* wrong length"),
        ("", HashAlgo.SHA256, "wrong length"),
        ("sha256:", None, "wrong length"),
    ],
)
def test_parse_errors(text: str, algo: HashAlgo | None, message: str) -> None:
    with pytest.raises(HashError, match=message) as info:
        Hash.parse(text, algo)
    assert isinstance(info.value, ParseError)


def test_digest_size_checked() -> None:
    with pytest.raises(HashError, match="32 bytes"):
        Hash(algo=HashAlgo.SHA256, digest=b"x")


def test_bare_sri_looking_text_without_known_prefix() -> None:
    # A base64 digest may contain '-'? No: standard base64 has '+' and '/', never '-'.
    # A text with '-' whose prefix is not an algorithm is treated as bare (and fails by length).
    with pytest.raises(HashError, match="does not name"):
        Hash.parse("foo-bar")


def test_base64_canonical_padding() -> None:
    digest = Hash.of(HashAlgo.MD5, b"")
    assert len(digest.to_base64()) == 24
    assert base64.b64decode(digest.to_base64()) == digest.digest
    assert Hash.parse(digest.to_base64(), HashAlgo.MD5) == digest
