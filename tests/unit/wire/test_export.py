"""Export stream codec: hand-made bytes, rejections, and round trips under any split."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import WireError
from nixdist.wire.export import (
    EXPORT_MAGIC,
    ExportedPath,
    ExportEnd,
    ExportEvent,
    ExportInfo,
    ExportNar,
    ExportReader,
    ExportRecord,
    decode_export,
    encode_export,
    encode_export_trailer,
)
from nixdist.wire.primitives import LIMIT_COUNT, LIMIT_PATH, encode_bytes, encode_u64


def s(*tokens: bytes) -> bytes:
    return b"".join(encode_bytes(token) for token in tokens)


def file_nar(data: bytes) -> bytes:
    return s(b"nix-archive-1", b"(", b"type", b"regular", b"contents", data, b")")


NAR = file_nar(b"hello\n")
P = "/nix/store/7jzhpbxk1zbbyhn3h5p8wpr2ml2pbnx3-hello"
R1 = "/nix/store/0c8wgvjfmqrpqkglaxr5kx1fxn9jaz98-dep"
D = "/nix/store/bkddjzcxrinwnyz5d4w4dx9ajb0kx6m4-hello.drv"

# One record by hand: u64(1), NAR, magic, path, references, deriver, no signature, u64(0).
STREAM = (
    encode_u64(1)
    + NAR
    + bytes.fromhex("4e49584500000000")  # EXPORT_MAGIC, little-endian "NIXE"
    + s(P.encode())
    + encode_u64(1)
    + s(R1.encode())
    + s(D.encode())
    + encode_u64(0)
    + encode_u64(0)
)
INFO = ExportInfo(path=P, references=(R1,), deriver=D)


def test_hand_made_stream() -> None:
    assert b"".join(encode_export([(INFO, [NAR[:10], NAR[10:]])])) == STREAM
    assert decode_export(STREAM) == [ExportRecord(info=INFO, nar=NAR)]


def test_events_carry_size_and_hash() -> None:
    reader = ExportReader()
    events = reader.feed(STREAM + b"rest")
    assert events == [
        ExportNar(data=NAR),
        ExportedPath(info=INFO, nar_size=len(NAR), nar_hash=hashlib.sha256(NAR).digest()),
        ExportEnd(),
    ]
    assert reader.done
    assert reader.unused_data == b"rest"
    assert reader.feed(b"!") == []
    assert reader.unused_data == b"rest!"


def test_empty_stream_and_no_deriver() -> None:
    assert decode_export(encode_u64(0)) == []
    info = ExportInfo(path=P)
    assert decode_export(b"".join(encode_export([(info, [NAR])]))) == [
        ExportRecord(info=info, nar=NAR)
    ]


def test_trailer_sorts_and_dedups_references() -> None:
    info = ExportInfo(path=P, references=(P, R1, R1))
    trailer = encode_export_trailer(info)
    assert trailer == (
        encode_u64(EXPORT_MAGIC)
        + s(P.encode())
        + encode_u64(2)
        + s(R1.encode(), P.encode(), b"")
        + encode_u64(0)
    )


def test_legacy_signature_is_read_and_ignored() -> None:
    stream = STREAM[:-16] + encode_u64(1) + s(b"sig") + encode_u64(0)
    assert decode_export(stream) == [ExportRecord(info=INFO, nar=NAR)]


def _replace(old: bytes, new: bytes) -> bytes:
    assert STREAM.count(old) == 1
    return STREAM.replace(old, new)


MAGIC_AT = len(encode_u64(1)) + len(NAR)
REJECTED: list[tuple[str, bytes, str]] = [
    (
        "bad flag",
        encode_u64(2),
        "bad export stream at offset 0 (record 0): expected 1 (a path follows) or 0",
    ),
    (
        "bad magic",
        _replace(encode_u64(EXPORT_MAGIC), encode_u64(EXPORT_MAGIC + 1)),
        f"at offset {MAGIC_AT}",
    ),
    (
        "bad NAR",
        encode_u64(1) + s(b"nix-archive-1", b"(", b"type", b"fifo"),
        "(record 0, NAR from offset 8): bad NAR at offset",
    ),
    (
        "long path",
        STREAM[: MAGIC_AT + 8] + encode_u64(LIMIT_PATH + 1),
        f"exceeds the limit {LIMIT_PATH}",
    ),
    (
        "many references",
        STREAM[: MAGIC_AT + 8] + s(P.encode()) + encode_u64(LIMIT_COUNT + 1),
        "references exceed the limit",
    ),
    (
        "path padding",
        STREAM[: MAGIC_AT + 8] + encode_u64(1) + b"/\0\0\0\0\0\0\1",
        "non-zero padding",
    ),
    ("bad signature flag", STREAM[:-16] + encode_u64(2), "expected 0 (no signature) or 1, got 2"),
    ("bad second flag", STREAM[:-8] + encode_u64(7), "(record 1): expected 1 (a path follows)"),
]


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_rejects(data: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        decode_export(data)
    assert message in str(info.value)


@pytest.mark.parametrize("end", range(len(STREAM)))
def test_truncated(end: int) -> None:
    with pytest.raises(WireError, match="truncated"):
        decode_export(STREAM[:end])


def test_trailing_bytes() -> None:
    with pytest.raises(WireError, match="1 bytes after the end"):
        decode_export(STREAM + b"x")


store_paths = st.text(
    st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=30
)
infos = st.builds(
    ExportInfo,
    path=store_paths,
    references=st.lists(store_paths, max_size=4, unique=True).map(lambda r: tuple(sorted(r))),
    deriver=st.none() | store_paths,
)
records = st.lists(st.tuples(infos, st.binary(max_size=50)), max_size=4)


@settings(max_examples=200)
@given(records, st.lists(st.integers(0, 5000), max_size=12))
def test_round_trip_any_split(items: list[tuple[ExportInfo, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode_export((info, [file_nar(data)]) for info, data in items))
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = ExportReader()
    events: list[ExportEvent] = []
    for a, b in itertools.pairwise(bounds):
        events += reader.feed(stream[a:b])
    reader.finish()
    got: list[tuple[ExportInfo, bytes]] = []
    nar = b""
    for event in events:
        match event:
            case ExportNar(data=piece):
                nar += piece
            case ExportedPath(info=info, nar_size=size, nar_hash=digest):
                assert (size, digest) == (len(nar), hashlib.sha256(nar).digest())
                got.append((info, nar))
                nar = b""
            case ExportEnd():
                pass
    assert got == [(info, file_nar(data)) for info, data in items]
    assert events[-1] == ExportEnd()
