"""Nix's base-32 encoding ("nix32"), used in store path hashes and in hash strings.

The alphabet is ``0123456789abcdfghijklmnpqrsvwxyz`` (32 characters: the digits and the
lower-case letters without ``e``, ``o``, ``u``, ``t``).

A digest of ``L`` bytes encodes to ``ceil(8 * L / 5)`` characters (52 for SHA-256, 32 for the
20-byte store path hash). The bytes are read as one little-endian number and the characters
are written most significant group first: for output position ``i`` from ``n - 1`` down to
``0`` take the 5 bits starting at bit ``5 * i`` (bit ``k`` is bit ``k % 8`` of byte
``k // 8``; bits past the end are zero).

Decoding is the inverse. It rejects characters outside the alphabet and, when ``8 * L`` is not
a multiple of 5, an encoding whose unused top bits are not zero: every digest has exactly one
encoding, as in Nix.
"""

from __future__ import annotations

from typing import Final

from nixdist.errors import ParseError

ALPHABET: Final = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUE: Final = {char: value for value, char in enumerate(ALPHABET)}


class Nix32Error(ParseError):
    """Text that is not the nix32 encoding of a digest of the expected size."""


def encoded_len(size: int) -> int:
    """Number of nix32 characters for a digest of `size` bytes."""
    return (size * 8 + 4) // 5


def decoded_len(length: int) -> int:
    """Number of bytes that `length` nix32 characters carry (the canonical inverse)."""
    return length * 5 // 8


def encode(data: bytes) -> str:
    number = int.from_bytes(data, "little")
    return "".join(
        ALPHABET[(number >> (5 * i)) & 0x1F] for i in range(encoded_len(len(data)) - 1, -1, -1)
    )


def decode(text: str, size: int | None = None) -> bytes:
    """Decode `text`; `size` is the digest size in bytes (by default derived from the length).

    Raises `Nix32Error` naming the first bad character and its position, a wrong length, or
    non-zero bits beyond the digest.
    """
    if size is None:
        size = decoded_len(len(text))
    if len(text) != encoded_len(size):
        raise Nix32Error(
            f"nix32 text of {len(text)} characters cannot encode {size} bytes "
            f"(expected {encoded_len(size)} characters)"
        )
    number = 0
    for position, char in enumerate(text):
        value = _VALUE.get(char)
        if value is None:
            raise Nix32Error(f"invalid nix32 character {char!r} at position {position}")
        number = (number << 5) | value
    if number >> (8 * size):
        raise Nix32Error(f"nix32 text {text!r} has non-zero bits beyond {size} bytes")
    return number.to_bytes(size, "little")


def is_valid(text: str, size: int | None = None) -> bool:
    try:
        decode(text, size)
    except Nix32Error:
        return False
    return True
