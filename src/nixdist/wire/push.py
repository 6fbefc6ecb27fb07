"""The buffering shared by push decoders (h11 style): `feed` bytes, get the events they complete.

A subclass implements `_step(events)`, which consumes what it can from ``_buf`` starting at
``_pos`` (the stream offset of ``_buf[0]`` is ``_base``), appends events and returns False when
it needs more bytes or the stream has ended; and `_is_done()`. Bytes fed after the end are kept in
`unused_data`: on the serve protocol the next reply follows a NAR or export stream directly.
"""

from __future__ import annotations

from typing import Generic, TypeVar

_E = TypeVar("_E")


class PushDecoder(Generic[_E]):
    __slots__ = ("_base", "_buf", "_pos", "_unused")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._base = 0  # stream offset of _buf[0]
        self._unused = b""

    @property
    def done(self) -> bool:
        """The stream is complete."""
        return self._is_done()

    def _is_done(self) -> bool:
        raise NotImplementedError

    @property
    def unused_data(self) -> bytes:
        """Bytes fed after the end of the stream (empty until `done`)."""
        return self._unused

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far; its size once `done`."""
        return self._base + self._pos

    def _step(self, events: list[_E]) -> bool:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[_E]:
        if self._is_done():
            self._unused += data
            return []
        if self._pos < len(self._buf):
            self._base += self._pos
            self._buf = self._buf[self._pos :] + data
        else:
            self._base += len(self._buf)
            self._buf = bytes(data)
        self._pos = 0
        events: list[_E] = []
        while self._step(events):
            pass
        if self._is_done():
            self._unused = self._buf[self._pos :]
            self._base += self._pos
            self._buf = b""
            self._pos = 0
        return events
