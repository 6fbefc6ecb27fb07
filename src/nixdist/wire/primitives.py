"""Nix's wire primitives: 64-bit integers and padded byte strings.

Every integer on every Nix wire is 8 bytes, unsigned, little-endian. A string is::

    u64(len) <len bytes> <0-7 zero bytes, so that len + padding is a multiple of 8>

Lists and sets of strings are ``u64(count)`` followed by the strings.

Encoders are free functions returning bytes. Decoding goes through `Reader`, a cursor over a
buffer in which every length read from the peer is checked against an explicit limit before
anything is allocated, and padding must be zero. A `Reader` made with ``partial=True`` raises
`NeedData` when the buffer ends early (the caller should wait for more bytes); otherwise a
short buffer is a `WireError`.

Text (store paths, derivation fields, setting values) is carried as bytes on the wire; it is
decoded as UTF-8 with ``surrogateescape`` so that any byte string round-trips through `str`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final, TypeVar

from nixdist.errors import WireError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

U64_MAX: Final = (1 << 64) - 1
U32_MAX: Final = (1 << 32) - 1

# Limits for lengths and counts read from a peer. Codecs pick the one that fits each field.
LIMIT_PATH: Final = 4096  # a store path, a machine URI, an output name
LIMIT_TEXT: Final = 64 << 20  # a derivation env value, an error message, a setting value
LIMIT_COUNT: Final = 1 << 20  # elements in a list or set

_T = TypeVar("_T")

_U64 = struct.Struct("<Q")
_ZEROS: Final = bytes(8)


class NeedData(Exception):  # noqa: N818 - it is a signal, not an error
    """The buffer ended before the value did; feed more bytes and try again."""


def encode_u64(value: int) -> bytes:
    if not 0 <= value <= U64_MAX:
        raise WireError(f"integer {value} does not fit in 64 unsigned bits")
    return _U64.pack(value)


def padding(length: int) -> int:
    """Number of zero bytes that follow a string of `length` bytes."""
    return -length % 8


def encode_bytes(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data + _ZEROS[: padding(len(data))]


def encode_text(text: str) -> bytes:
    return encode_bytes(text.encode("utf-8", "surrogateescape"))


def encode_texts(items: Iterable[str]) -> bytes:
    items = list(items)
    return _U64.pack(len(items)) + b"".join(encode_text(item) for item in items)


def encode_bool(value: bool) -> bytes:
    return _U64.pack(1 if value else 0)


class Reader:
    """A bounds-checked cursor over a buffer of wire bytes."""

    __slots__ = ("_data", "_partial", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, *, partial: bool = False) -> None:
        self._data = memoryview(data).cast("B")
        self._partial = partial
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self._data):
            if self._partial:
                raise NeedData
            raise WireError(
                f"truncated: needed {n} bytes at offset {self.pos}, have {self.remaining}"
            )
        chunk = self._data[self.pos : end]
        self.pos = end
        return chunk

    def read_raw(self, n: int) -> bytes:
        """Exactly `n` unframed bytes."""
        return bytes(self._take(n))

    def read_u64(self, *, max_value: int = U64_MAX) -> int:
        (value,) = _U64.unpack(self._take(8))
        if value > max_value:
            raise WireError(f"integer {value} at offset {self.pos - 8} is larger than {max_value}")
        return int(value)

    def read_bool(self) -> bool:
        value = self.read_u64()
        if value > 1:
            raise WireError(f"boolean {value} at offset {self.pos - 8} is neither 0 nor 1")
        return value == 1

    def read_bytes(self, max_len: int) -> bytes:
        start = self.pos
        length = self.read_u64()
        if length > max_len:
            raise WireError(
                f"string of {length} bytes at offset {start} exceeds the limit {max_len}"
            )
        data = bytes(self._take(length))
        pad = self._take(padding(length))
        if any(pad):
            raise WireError(f"non-zero padding after string at offset {start}")
        return data

    def read_text(self, max_len: int = LIMIT_PATH) -> str:
        return self.read_bytes(max_len).decode("utf-8", "surrogateescape")

    def read_texts(self, max_len: int = LIMIT_PATH, max_count: int = LIMIT_COUNT) -> list[str]:
        start = self.pos
        count = self.read_u64()
        if count > max_count:
            raise WireError(
                f"list of {count} strings at offset {start} exceeds the limit {max_count}"
            )
        return [self.read_text(max_len) for _ in range(count)]

    def expect(self, literal: bytes, what: str) -> None:
        """Read one string and check that it equals `literal` (NAR tokens, markers)."""
        start = self.pos
        got = self.read_bytes(max(len(literal), 64))
        if got != literal:
            raise WireError(f"expected {what} {literal!r} at offset {start}, got {got[:64]!r}")

    def check_end(self) -> None:
        if self.remaining:
            raise WireError(f"{self.remaining} unexpected trailing bytes at offset {self.pos}")


def maybe_decode(
    decode: Callable[[Reader], _T], buffer: bytes | bytearray
) -> tuple[_T, int] | None:
    """Decode one value from the start of `buffer`.

    Returns the value and the number of bytes it used, or None if `buffer` does not yet hold
    the whole value. Malformed bytes raise `WireError` as soon as they are seen.
    """
    reader = Reader(buffer, partial=True)
    try:
        value = decode(reader)
    except NeedData:
        return None
    return value, reader.pos
