"""nix32: tables recorded with `nix-hash --to-base32`, round trips, and rejected inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ParseError
from nixdist.model import nixbase32

# (base16 digest, nix32) — from `nix-hash --type X --flat [--base32]` of the 3 bytes "abc".
TABLE = [
    ("", ""),
    ("00", "00"),
    ("ff", "7z"),
    ("900150983cd24fb0d6963f7d28e17f72", "3jgzhjhz9zjvbb0kyj7jc500ch"),
    ("a9993e364706816aba3e25717850c26c9cd0d89d", "kpcd173cq987hw957sx6m0868wv3x6d9"),
    (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
    ),
    (
        (
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        ),
        (
            "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1"
            "ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx"
        ),
    ),
]


@pytest.mark.parametrize(("hex_", "text"), TABLE)
def test_table(hex_: str, text: str) -> None:
    data = bytes.fromhex(hex_)
    assert nixbase32.encode(data) == text
    assert nixbase32.decode(text, len(data)) == data
    assert nixbase32.decode(text) == data


@given(st.binary(max_size=80))
def test_round_trip(data: bytes) -> None:
    text = nixbase32.encode(data)
    assert len(text) == nixbase32.encoded_len(len(data))
    assert set(text) <= set(nixbase32.ALPHABET)
    assert nixbase32.decode(text, len(data)) == data
    assert nixbase32.decode(text) == data


def test_alphabet() -> None:
    assert len(nixbase32.ALPHABET) == 32
    assert not set("eotu") & set(nixbase32.ALPHABET)


@pytest.mark.parametrize(
    ("text", "size", "message"),
    [
        ("e0", 1, "invalid nix32 character 'e' at position 0"),
        ("0u", 1, "invalid nix32 character 'u' at position 1"),
        ("0O", 1, "invalid nix32 character 'O'"),
        ("80", 1, "non-zero bits"),  # 8 << 5 needs a 9th bit
        ("zz", 1, "non-zero bits"),
        ("000", 1, "cannot encode 1 bytes"),
        ("0", 1, "cannot encode 1 bytes"),
        ("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", 20, "cannot encode 20"),
    ],
)
def test_decode_errors(text: str, size: int, message: str) -> None:
    with pytest.raises(nixbase32.Nix32Error, match=message) as info:
        nixbase32.decode(text, size)
    assert isinstance(info.value, ParseError)
    assert not nixbase32.is_valid(text, size)


@given(st.binary(min_size=1, max_size=40), st.data())
def test_non_canonical_top_bits_rejected(data: bytes, draw: st.DataObject) -> None:
    text = nixbase32.encode(data)
    spare_bits = 5 * len(text) - 8 * len(data)
    if spare_bits == 0:
        return
    top = nixbase32.ALPHABET.index(text[0])
    extra = draw.draw(st.integers(1, (1 << spare_bits) - 1)) << (5 - spare_bits)
    bad = nixbase32.ALPHABET[top | extra] + text[1:]
    with pytest.raises(nixbase32.Nix32Error):
        nixbase32.decode(bad, len(data))
