"""The `nix-store --export` stream (also the payload of the serve protocol's ImportPaths).

Grammar (``u64`` and ``str`` as in `nixdist.wire.primitives`)::

    stream      = ( u64(1) path-record )* u64(0)
    path-record = NAR                       the path's contents, see nixdist.wire.nar
                  u64(0x4558494e)           EXPORT_MAGIC, "NIXE" read as a little-endian u32
                  str(store path)
                  u64(n) str(reference)*n   a set, sorted, full store paths
                  str(deriver or "")
                  u64(0)                    no signature (legacy: u64(1) str(sig), ignored)

Nix writes the paths in dependency order (references first). There is no hash field: an
importer computes narHash and narSize from the NAR bytes, which `ExportReader` does for you.

Decoding
--------
`ExportReader` is a push decoder: `feed(data)` returns events. The NAR of each record is
streamed as raw bytes (`ExportNar` chunks, exactly the bytes Nix would hash), not decoded
into NAR events and never collected; a `NarReader` runs alongside only to find where the NAR
ends. After the trailer comes an `ExportedPath` with the metadata, the NAR size and its
SHA-256 digest. The terminator yields `ExportEnd`, after which `done` is true and
`unused_data` holds anything fed beyond it. `decode_export` collects whole records in memory,
for small streams and tests.

Store paths are `str` here (UTF-8 with ``surrogateescape``, like all text in `wire`); they are
not parsed as store paths, only bounded by `LIMIT_PATH`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import WireError
from nixdist.wire.nar_reader import NarReader
from nixdist.wire.primitives import LIMIT_COUNT, LIMIT_PATH, encode_text, encode_u64, padding
from nixdist.wire.push import PushDecoder

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

EXPORT_MAGIC: Final = 0x4558494E
LIMIT_SIGNATURE: Final = 4096  # a legacy signature (read and ignored)

_U64: Final = struct.Struct("<Q")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportInfo:
    """The metadata that follows a path's NAR in an export stream."""

    path: str
    references: tuple[str, ...] = ()
    deriver: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportNar:
    """A piece of the NAR of the record being read, in order."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedPath:
    """A record's trailer has been read: its metadata, narSize and narHash (SHA-256 digest)."""

    info: ExportInfo
    nar_size: int
    nar_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportEnd:
    """The stream's terminating ``u64(0)``."""


ExportEvent = ExportNar | ExportedPath | ExportEnd


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportRecord:
    """One path of an export stream with its whole NAR (see `decode_export`)."""

    info: ExportInfo
    nar: bytes


# --------------------------------------------------------------------------------------------
# Encoding

EXPORT_NEXT: Final = encode_u64(1)
EXPORT_END: Final = encode_u64(0)


def encode_export_trailer(info: ExportInfo) -> bytes:
    """The bytes that follow a path's NAR: magic, path, references (sorted), deriver, no sig."""
    references = sorted(set(info.references))
    return b"".join(
        [
            encode_u64(EXPORT_MAGIC),
            encode_text(info.path),
            encode_u64(len(references)),
            *(encode_text(reference) for reference in references),
            encode_text(info.deriver or ""),
            encode_u64(0),
        ]
    )


def encode_export_path(info: ExportInfo, nar: Iterable[bytes]) -> Iterator[bytes]:
    """One record: ``u64(1)``, the NAR chunks as given (not checked), the trailer."""
    yield EXPORT_NEXT
    yield from nar
    yield encode_export_trailer(info)


def encode_export(items: Iterable[tuple[ExportInfo, Iterable[bytes]]]) -> Iterator[bytes]:
    """A whole stream of records (give them in dependency order), then the terminator."""
    for info, nar in items:
        yield from encode_export_path(info, nar)
    yield EXPORT_END


# --------------------------------------------------------------------------------------------
# Decoding

_S_FLAG: Final = 0  # u64: 1 = a record follows, 0 = end
_S_NAR: Final = 1
_S_MAGIC: Final = 2
_S_PATH: Final = 3
_S_REF_COUNT: Final = 4
_S_REFS: Final = 5
_S_DERIVER: Final = 6
_S_SIG_FLAG: Final = 7
_S_SIG: Final = 8
_S_DONE: Final = 9


class ExportReader(PushDecoder[ExportEvent]):
    """Push decoder for an export stream (see the module docstring for the events)."""

    __slots__ = (
        "_deriver",
        "_hash",
        "_nar",
        "_nar_start",
        "_path",
        "_record",
        "_ref_count",
        "_refs",
        "_state",
    )

    def __init__(self) -> None:
        super().__init__()
        self._state = _S_FLAG
        self._record = 0  # index of the current record, for messages
        self._nar = NarReader(contents=False)
        self._nar_start = 0
        self._hash = hashlib.sha256()
        self._path = ""
        self._ref_count = 0
        self._refs: list[str] = []
        self._deriver: str | None = None

    def _is_done(self) -> bool:
        return self._state == _S_DONE

    def finish(self) -> None:
        """Declare the end of input: raise `WireError` unless the stream was complete."""
        if not self.done:
            raise self._error("truncated export stream")

    def _step(self, events: list[ExportEvent]) -> bool:  # noqa: C901, PLR0911, PLR0912 - one branch per state keeps the machine in one place
        state = self._state
        if state == _S_NAR:
            return self._step_nar(events)
        if state == _S_FLAG:
            flag = self._u64()
            if flag is None:
                return False
            if flag == 0:
                self._state = _S_DONE
                events.append(ExportEnd())
                return False
            if flag != 1:
                raise self._error(f"expected 1 (a path follows) or 0 (the end), got {flag}", 8)
            self._state = _S_NAR
            self._nar_start = self._base + self._pos
            return True
        if state == _S_MAGIC:
            magic = self._u64()
            if magic is None:
                return False
            if magic != EXPORT_MAGIC:
                raise self._error(f"expected the export magic {EXPORT_MAGIC:#x}, got {magic:#x}", 8)
            self._state = _S_PATH
            return True
        if state in {_S_PATH, _S_REFS, _S_DERIVER, _S_SIG}:
            return self._step_text(state, events)
        if state == _S_REF_COUNT:
            count = self._u64()
            if count is None:
                return False
            if count > LIMIT_COUNT:
                raise self._error(f"{count} references exceed the limit {LIMIT_COUNT}", 8)
            self._ref_count = count
            self._refs = []
            self._state = _S_REFS if count else _S_DERIVER
            return True
        if state == _S_SIG_FLAG:
            flag = self._u64()
            if flag is None:
                return False
            if flag > 1:
                raise self._error(f"expected 0 (no signature) or 1, got {flag}", 8)
            if flag == 0:
                self._end_record(events)
            else:
                self._state = _S_SIG
            return True
        return False  # _S_DONE

    def _step_text(self, state: int, events: list[ExportEvent]) -> bool:
        text = self._text(LIMIT_SIGNATURE if state == _S_SIG else LIMIT_PATH)
        if text is None:
            return False
        if state == _S_PATH:
            self._path = text
            self._state = _S_REF_COUNT
        elif state == _S_REFS:
            self._refs.append(text)
            if len(self._refs) == self._ref_count:
                self._state = _S_DERIVER
        elif state == _S_DERIVER:
            self._deriver = text or None
            self._state = _S_SIG_FLAG
        else:  # _S_SIG: a legacy signature, ignored like Nix does
            self._end_record(events)
        return True

    def _step_nar(self, events: list[ExportEvent]) -> bool:
        if self._pos == len(self._buf):
            return False
        rest = self._buf[self._pos :]
        try:
            self._nar.feed(rest)
        except WireError as err:
            raise WireError(
                f"bad export stream (record {self._record}, NAR from offset {self._nar_start}): "
                f"{err}"
            ) from None
        used = len(rest) - len(self._nar.unused_data) if self._nar.done else len(rest)
        piece = rest[:used]
        self._hash.update(piece)
        events.append(ExportNar(data=piece))
        self._pos += used
        if self._nar.done:
            self._state = _S_MAGIC
        return True

    def _end_record(self, events: list[ExportEvent]) -> None:
        info = ExportInfo(path=self._path, references=tuple(self._refs), deriver=self._deriver)
        events.append(
            ExportedPath(info=info, nar_size=self._nar.offset, nar_hash=self._hash.digest())
        )
        self._record += 1
        self._nar = NarReader(contents=False)
        self._hash = hashlib.sha256()
        self._refs = []
        self._state = _S_FLAG

    def _u64(self) -> int | None:
        if len(self._buf) - self._pos < _U64.size:
            return None
        (value,) = _U64.unpack_from(self._buf, self._pos)
        self._pos += _U64.size
        return int(value)

    def _text(self, limit: int) -> str | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _U64.size:
            return None
        (length,) = _U64.unpack_from(buf, pos)
        if length > limit:
            raise self._error(f"string of {length} bytes exceeds the limit {limit}")
        start = pos + _U64.size
        end = start + length
        padded = end + padding(length)
        if len(buf) < padded:
            return None
        if any(buf[end:padded]):
            raise self._error("non-zero padding after string")
        self._pos = padded
        return buf[start:end].decode("utf-8", "surrogateescape")

    def _error(self, message: str, back: int = 0) -> WireError:
        offset = self._base + self._pos - back
        return WireError(f"bad export stream at offset {offset} (record {self._record}): {message}")


def decode_export(data: bytes) -> list[ExportRecord]:
    """Decode a complete export stream held in memory; trailing bytes are an error."""
    reader = ExportReader()
    records: list[ExportRecord] = []
    nar: list[bytes] = []
    for event in reader.feed(data):
        match event:
            case ExportNar(data=piece):
                nar.append(piece)
            case ExportedPath(info=info):
                records.append(ExportRecord(info=info, nar=b"".join(nar)))
                nar = []
            case ExportEnd():
                pass
    reader.finish()
    if reader.unused_data:
        raise WireError(f"{len(reader.unused_data)} bytes after the end of the export stream")
    return records
