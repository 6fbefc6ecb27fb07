"""NAR codec: hand-made byte tables, every rejection of the reader, writer misuse, and round trips.

The byte-exact comparison with real Nix lives in tests/integration/test_nar_vs_nix.py.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import LocalProtocolError, WireError
from nixdist.wire.nar import (
    MAX_DEPTH,
    MAX_NAME_LEN,
    MAX_TARGET_LEN,
    Contents,
    Directory,
    DirectoryEnd,
    NarEvent,
    NarWriter,
    Regular,
    Symlink,
    encode_nar,
    render_path,
)
from nixdist.wire.nar_reader import NarReader, decode_nar, nar_size_and_hash
from nixdist.wire.primitives import encode_bytes, encode_u64


def s(*tokens: bytes) -> bytes:
    """Wire strings, one per token."""
    return b"".join(encode_bytes(token) for token in tokens)


MAGIC = s(b"nix-archive-1")


def regular(data: bytes, *, executable: bool = False) -> bytes:
    exe = s(b"executable", b"") if executable else b""
    return s(b"(", b"type", b"regular") + exe + s(b"contents", data, b")")


def symlink(target: bytes) -> bytes:
    return s(b"(", b"type", b"symlink", b"target", target, b")")


def directory(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        s(b"entry", b"(", b"name", name, b"node") + node + s(b")") for name, node in entries
    )
    return s(b"(", b"type", b"directory") + body + s(b")")


def feed_all(reader: NarReader, pieces: list[bytes]) -> list[NarEvent]:
    events = [event for piece in pieces for event in reader.feed(piece)]
    reader.finish()
    return events


def send_all(writer: NarWriter, events: list[NarEvent]) -> bytes:
    return b"".join(writer.send(event) for event in events)


def merged(events: list[NarEvent]) -> list[NarEvent]:
    """Events with consecutive `Contents` joined, so that chunking does not matter."""
    out: list[NarEvent] = []
    for event in events:
        if isinstance(event, Contents):
            if not event.data:
                continue
            if out and isinstance(out[-1], Contents):
                out[-1] = Contents(data=out[-1].data + event.data)
                continue
        out.append(event)
    return out


# --------------------------------------------------------------------------------------------
# Exact bytes

# The NAR of a regular file "hi", written out by hand from the grammar.
HI_HEX = (
    "0d00000000000000"
    "6e69782d61726368"
    "6976652d31000000"  # "nix-archive-1"
    "0100000000000000"
    "2800000000000000"  # "("
    "0400000000000000"
    "7479706500000000"  # "type"
    "0700000000000000"
    "726567756c617200"  # "regular"
    "0800000000000000"
    "636f6e74656e7473"  # "contents"
    "0200000000000000"
    "6869000000000000"  # "hi"
    "0100000000000000"
    "2900000000000000"  # ")"
)


def test_hex_single_file() -> None:
    events: list[NarEvent] = [Regular(path=(), executable=False, size=2), Contents(data=b"hi")]
    data = b"".join(encode_nar(events))
    assert data.hex() == HI_HEX
    assert decode_nar(bytes.fromhex(HI_HEX)) == events


TREES: list[tuple[str, list[NarEvent], bytes]] = [
    ("empty file", [Regular(path=(), executable=False, size=0)], MAGIC + regular(b"")),
    (
        "executable",
        [Regular(path=(), executable=True, size=8), Contents(data=b"#!/bin/s")],
        MAGIC + regular(b"#!/bin/s", executable=True),
    ),
    ("symlink", [Symlink(path=(), target=b"/nix/store")], MAGIC + symlink(b"/nix/store")),
    (
        "empty directory",
        [Directory(path=()), DirectoryEnd(path=())],
        MAGIC + directory(),
    ),
    (
        "nested",
        [
            Directory(path=()),
            Regular(path=(b"B",), executable=False, size=1),
            Contents(data=b"x"),
            Directory(path=(b"a",)),
            Symlink(path=(b"a", b"l"), target=b"../B"),
            DirectoryEnd(path=(b"a",)),
            Directory(path=(b"\xff",)),
            DirectoryEnd(path=(b"\xff",)),
            DirectoryEnd(path=()),
        ],
        MAGIC
        + directory(
            (b"B", regular(b"x")),
            (b"a", directory((b"l", symlink(b"../B")))),
            (b"\xff", directory()),
        ),
    ),
]


@pytest.mark.parametrize(("events", "data"), [t[1:] for t in TREES], ids=[t[0] for t in TREES])
def test_table(events: list[NarEvent], data: bytes) -> None:
    assert b"".join(encode_nar(events)) == data
    assert decode_nar(data) == events
    writer = NarWriter()
    assert b"".join(writer.send(event) for event in events) == data
    assert writer.done


# --------------------------------------------------------------------------------------------
# Reader rejections: (id, bytes, part of the message)

FILE = regular(b"x")
DEEP = b"".join(
    s(b"(", b"type", b"directory", b"entry", b"(", b"name", b"d", b"node")
    for _ in range(MAX_DEPTH + 1)
)

REJECTED: list[tuple[str, bytes, str]] = [
    ("wrong magic", s(b"nix-archive-2") + FILE, "expected 'nix-archive-1'"),
    (
        "not a NAR",
        b"\xff" * 64,
        "expected 'nix-archive-1', got a string of 18446744073709551615 bytes",
    ),
    ("missing (", MAGIC + s(b"type", b"regular"), "expected '('"),
    ("missing type", MAGIC + s(b"(", b"tipe"), "expected 'type'"),
    ("unknown type", MAGIC + s(b"(", b"type", b"fifo", b")"), "unknown file type b'fifo'"),
    (
        "unknown field",
        MAGIC + s(b"(", b"type", b"regular", b"size", b"1"),
        "expected 'executable' or 'contents'",
    ),
    (
        "executable value",
        MAGIC + s(b"(", b"type", b"regular", b"executable", b"1", b"contents", b"", b")"),
        "expected '', got b'1'",
    ),
    (
        "executable twice",
        MAGIC + s(b"(", b"type", b"regular", b"executable", b"", b"executable"),
        "expected 'contents'",
    ),
    (
        "missing ) after contents",
        MAGIC + s(b"(", b"type", b"regular", b"contents", b"", b"("),
        "expected ')'",
    ),
    (
        "contents padding",
        MAGIC
        + s(b"(", b"type", b"regular", b"contents")
        + encode_u64(1)
        + b"x\0\0\0\0\0\0\1"
        + s(b")"),
        "non-zero padding after file contents",
    ),
    (
        "token padding",
        MAGIC + s(b"(", b"type") + encode_u64(7) + b"regular\1",
        "non-zero padding after token",
    ),
    ("literal padding", encode_u64(13) + b"nix-archive-1\0\0\1" + FILE, "with non-zero padding"),
    ("oversize token", MAGIC + s(b"(", b"type", b"r" * 17), "token of 17 bytes is longer than 16"),
    ("huge token", MAGIC + s(b"(", b"type") + encode_u64(1 << 63), "longer than 16"),
    ("symlink missing target", MAGIC + s(b"(", b"type", b"symlink", b")"), "expected 'target'"),
    ("empty target", MAGIC + symlink(b""), "empty symlink target"),
    ("NUL in target", MAGIC + symlink(b"a\0b"), "contains NUL"),
    (
        "oversize target",
        MAGIC + symlink(b"t" * (MAX_TARGET_LEN + 1)),
        "symlink target of 4096 bytes is longer than 4095",
    ),
    (
        "symlink extra field",
        MAGIC + s(b"(", b"type", b"symlink", b"target", b"t", b"target"),
        "expected ')'",
    ),
    (
        "dir unknown field",
        MAGIC + s(b"(", b"type", b"directory", b"name"),
        "expected 'entry' or ')'",
    ),
    ("entry without (", MAGIC + s(b"(", b"type", b"directory", b"entry", b"name"), "expected '('"),
    (
        "entry without name",
        MAGIC + s(b"(", b"type", b"directory", b"entry", b"(", b"node"),
        "expected 'name'",
    ),
    (
        "entry without node",
        MAGIC + s(b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"type"),
        "expected 'node'",
    ),
    (
        "entry without )",
        MAGIC + directory()[:-16] + s(b"entry", b"(", b"name", b"a", b"node") + FILE + s(b"entry"),
        "expected ')'",
    ),
    ("empty name", MAGIC + directory((b"", FILE)), "invalid entry empty name"),
    ("dot", MAGIC + directory((b".", FILE)), "name b'.' is not allowed"),
    ("dot dot", MAGIC + directory((b"..", FILE)), "name b'..' is not allowed"),
    ("slash", MAGIC + directory((b"a/b", FILE)), "contains '/'"),
    ("NUL in name", MAGIC + directory((b"a\0", FILE)), "contains NUL"),
    (
        "oversize name",
        MAGIC + directory((b"n" * (MAX_NAME_LEN + 1), FILE)),
        "entry name of 256 bytes is longer than 255",
    ),
    (
        "huge name",
        MAGIC + s(b"(", b"type", b"directory", b"entry", b"(", b"name") + encode_u64(1 << 62),
        "longer than 255",
    ),
    (
        "name padding",
        MAGIC
        + s(b"(", b"type", b"directory", b"entry", b"(", b"name")
        + encode_u64(1)
        + b"a\0\0\0\0\0\0\1",
        "non-zero padding after entry name",
    ),
    ("unsorted", MAGIC + directory((b"b", FILE), (b"a", FILE)), "unsorted entry b'a' after b'b'"),
    (
        "unsorted bytewise",
        MAGIC + directory((b"\xc3\xa9", FILE), (b"z", FILE)),
        "unsorted entry b'z'",
    ),
    ("duplicate", MAGIC + directory((b"a", FILE), (b"a", FILE)), "duplicate entry b'a'"),
    ("too deep", MAGIC + DEEP, f"nested deeper than {MAX_DEPTH}"),
]


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_reader_rejects(data: bytes, message: str) -> None:
    reader = NarReader()
    with pytest.raises(WireError, match="bad NAR at offset") as info:
        feed_all(reader, [data])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_reader_rejects_bytewise(data: bytes, message: str) -> None:
    """The same rejections when the bytes arrive one at a time."""
    reader = NarReader()
    with pytest.raises(WireError) as info:
        feed_all(reader, [data[i : i + 1] for i in range(len(data))])
    assert message in str(info.value)


def test_error_names_offset_and_path() -> None:
    data = MAGIC + directory((b"d", directory((b"b", FILE), (b"a", FILE))))
    with pytest.raises(WireError) as info:
        decode_nar(data)
    offset = data.index(s(b"a", b"node"))
    assert str(info.value) == (f"bad NAR at offset {offset} ('d'): unsorted entry b'a' after b'b'")


def test_error_offset_counts_across_feeds() -> None:
    data = MAGIC + s(b"(", b"type", b"fifo")
    reader = NarReader()
    reader.feed(data[:20])
    reader.feed(data[20:41])
    with pytest.raises(WireError, match=f"at offset {len(MAGIC) + 32} "):
        reader.feed(data[41:])


@pytest.mark.parametrize(("events", "data"), [t[1:] for t in TREES], ids=[t[0] for t in TREES])
def test_every_truncation_is_reported(events: list[NarEvent], data: bytes) -> None:
    del events
    for end in range(len(data)):
        reader = NarReader()
        reader.feed(data[:end])
        assert not reader.done
        with pytest.raises(WireError, match="truncated NAR"):
            reader.finish()


def test_huge_contents_size_waits_for_data() -> None:
    """A size is not an allocation: a 2**63-byte file just needs more input."""
    reader = NarReader()
    events = reader.feed(
        MAGIC + s(b"(", b"type", b"regular", b"contents") + encode_u64(1 << 63) + b"abc"
    )
    assert events == [Regular(path=(), executable=False, size=1 << 63), Contents(data=b"abc")]
    with pytest.raises(WireError, match="truncated"):
        reader.finish()


def test_unused_data_and_done() -> None:
    nar = MAGIC + FILE
    reader = NarReader()
    assert reader.feed(nar + b"next reply") == [
        Regular(path=(), executable=False, size=1),
        Contents(data=b"x"),
    ]
    assert reader.done
    assert reader.unused_data == b"next reply"
    assert reader.offset == len(nar)
    assert reader.feed(b"!") == []
    assert reader.unused_data == b"next reply!"
    reader.finish()


def test_unused_data_split_inside_trailing_token() -> None:
    nar = MAGIC + directory()
    reader = NarReader()
    reader.feed(nar[:-3])
    reader.feed(nar[-3:] + b"tail")
    assert reader.done
    assert reader.unused_data == b"tail"


def test_decode_nar_rejects_trailing_bytes() -> None:
    with pytest.raises(WireError, match="3 bytes after the end"):
        decode_nar(MAGIC + FILE + b"abc")


def test_contents_are_not_copied_or_buffered() -> None:
    size = 4 << 20
    chunk = 1 << 20
    header = MAGIC + s(b"(", b"type", b"regular", b"contents") + encode_u64(size)
    pieces = [bytes([i]) * chunk for i in range(size // chunk)]
    reader = NarReader()
    assert reader.feed(header) == [Regular(path=(), executable=False, size=size)]
    for piece in pieces:
        (event,) = reader.feed(piece)
        assert isinstance(event, Contents)
        assert event.data is piece  # handed through without a copy
        assert len(reader._buf) - reader._pos == 0  # nothing kept
    reader.feed(s(b")"))
    assert reader.done


def test_structure_only_mode() -> None:
    reader = NarReader(contents=False)
    events = reader.feed(MAGIC + regular(b"secret"))
    assert events == [Regular(path=(), executable=False, size=6)]
    assert reader.done


def test_render_path() -> None:
    assert render_path(()) == "<root>"
    assert render_path((b"a", b"b\xff")) == "a/b\\xff"


# --------------------------------------------------------------------------------------------
# Writer misuse

R = Regular(path=(), executable=False, size=0)
WRITER_ERRORS: list[tuple[str, list[NarEvent], type[Exception], str]] = [
    (
        "first not root",
        [Regular(path=(b"a",), executable=False, size=0)],
        LocalProtocolError,
        "must be the root",
    ),
    ("after end", [R, R], LocalProtocolError, "after the end"),
    (
        "contents outside file",
        [Directory(path=()), Contents(data=b"x")],
        LocalProtocolError,
        "outside a regular file",
    ),
    (
        "too much contents",
        [Regular(path=(), executable=False, size=1), Contents(data=b"xy")],
        LocalProtocolError,
        "only 1 are due",
    ),
    (
        "too little contents",
        [
            Directory(path=()),
            Regular(path=(b"a",), executable=False, size=2),
            Contents(data=b"x"),
            DirectoryEnd(path=()),
        ],
        LocalProtocolError,
        "1 bytes of contents are due",
    ),
    (
        "negative size",
        [Regular(path=(), executable=False, size=-1)],
        LocalProtocolError,
        "negative",
    ),
    (
        "not a child",
        [Directory(path=()), Regular(path=(b"a", b"b"), executable=False, size=0)],
        LocalProtocolError,
        "not an entry of",
    ),
    (
        "wrong end",
        [Directory(path=()), Directory(path=(b"a",)), DirectoryEnd(path=())],
        LocalProtocolError,
        "is not open",
    ),
    ("end without dir", [DirectoryEnd(path=())], LocalProtocolError, "is not open"),
    ("bad name", [Directory(path=()), Directory(path=(b"..",))], WireError, "not allowed"),
    ("slash", [Directory(path=()), Directory(path=(b"a/b",))], WireError, "contains '/'"),
    (
        "unsorted",
        [
            Directory(path=()),
            Directory(path=(b"b",)),
            DirectoryEnd(path=(b"b",)),
            Directory(path=(b"a",)),
        ],
        WireError,
        "strictly increasing",
    ),
    (
        "duplicate",
        [
            Directory(path=()),
            Symlink(path=(b"a",), target=b"x"),
            Symlink(path=(b"a",), target=b"x"),
        ],
        WireError,
        "strictly increasing",
    ),
    ("empty target", [Symlink(path=(), target=b"")], WireError, "empty symlink target"),
    ("long target", [Symlink(path=(), target=b"x" * 4096)], WireError, "longer than 4095"),
]


@pytest.mark.parametrize(
    ("events", "error", "message"),
    [w[1:] for w in WRITER_ERRORS],
    ids=[w[0] for w in WRITER_ERRORS],
)
def test_writer_rejects(events: list[NarEvent], error: type[Exception], message: str) -> None:
    writer = NarWriter()
    with pytest.raises(error, match=message):
        send_all(writer, events)


def test_writer_depth_limit() -> None:
    writer = NarWriter()
    path: tuple[bytes, ...] = ()
    writer.send(Directory(path=path))
    for _ in range(MAX_DEPTH - 1):
        path = (*path, b"d")
        writer.send(Directory(path=path))
    writer.send(Symlink(path=(*path, b"last"), target=b"x"))
    path = (*path, b"m")
    writer.send(Directory(path=path))  # depth MAX_DEPTH is fine
    with pytest.raises(WireError, match="nested deeper"):
        writer.send(Directory(path=(*path, b"n")))


def test_encode_nar_requires_a_complete_tree() -> None:
    with pytest.raises(LocalProtocolError, match="ended before"):
        list(encode_nar([Directory(path=())]))


def test_encode_nar_coalesces_and_passes_big_contents_through() -> None:
    big = b"b" * (1 << 20)
    events: list[NarEvent] = [Directory(path=())]
    for i in range(2000):
        events += [Regular(path=(b"f%05d" % i,), executable=False, size=3), Contents(data=b"abc")]
    events += [
        Regular(path=(b"z",), executable=False, size=len(big)),
        Contents(data=big),
        DirectoryEnd(path=()),
    ]
    chunks = list(encode_nar(events))
    assert any(chunk is big for chunk in chunks)
    # small pieces are joined: only the piece before `big` and the last one may be short
    assert sum(len(chunk) < 64 * 1024 for chunk in chunks) <= 2
    assert decode_nar(b"".join(chunks)) == events


def test_nar_size_and_hash() -> None:
    data = MAGIC + FILE
    assert nar_size_and_hash([data[:5], data[5:]]) == (len(data), hashlib.sha256(data).digest())


# --------------------------------------------------------------------------------------------
# Round trips with random trees


@dataclass(frozen=True)
class File:
    data: bytes
    executable: bool
    cuts: tuple[int, ...]  # where the writer's Contents chunks are cut


@dataclass(frozen=True)
class Link:
    target: bytes


@dataclass(frozen=True)
class Dir:
    entries: dict[bytes, File | Link | Dir]


Node = File | Link | Dir

names = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in {b".", b".."}
)
files = st.builds(
    File,
    data=st.binary(max_size=70),
    executable=st.booleans(),
    cuts=st.lists(st.integers(0, 70), max_size=3).map(lambda c: tuple(sorted(c))),
)
links = st.builds(Link, target=st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t))
trees: st.SearchStrategy[Node] = st.recursive(
    files | links,
    lambda children: st.builds(Dir, entries=st.dictionaries(names, children, max_size=5)),
    max_leaves=25,
)


def events_of(node: Node, path: tuple[bytes, ...] = ()) -> list[NarEvent]:
    match node:
        case File(data=data, executable=executable, cuts=cuts):
            out: list[NarEvent] = [Regular(path=path, executable=executable, size=len(data))]
            bounds = [0, *(c for c in cuts if c < len(data)), len(data)]
            out += [Contents(data=data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
            return out
        case Link(target=target):
            return [Symlink(path=path, target=target)]
        case Dir(entries=entries):
            out = [Directory(path=path)]
            for name in sorted(entries):
                out += events_of(entries[name], (*path, name))
            return [*out, DirectoryEnd(path=path)]


def reference_encoding(node: Node) -> bytes:
    """The grammar, transcribed as directly as possible: an independent check of the writer."""
    match node:
        case File(data=data, executable=executable):
            return regular(data, executable=executable)
        case Link(target=target):
            return symlink(target)
        case Dir(entries=entries):
            return directory(
                *((name, reference_encoding(entries[name])) for name in sorted(entries))
            )


@given(trees)
def test_writer_matches_the_grammar(tree: Node) -> None:
    assert b"".join(encode_nar(events_of(tree))) == MAGIC + reference_encoding(tree)


@given(trees)
def test_round_trip(tree: Node) -> None:
    events = events_of(tree)
    assert merged(decode_nar(b"".join(encode_nar(events)))) == merged(events)


@settings(max_examples=200)
@given(trees, st.lists(st.integers(0, 10_000), max_size=20), st.binary(max_size=20))
def test_any_split_decodes_the_same(tree: Node, cuts: list[int], tail: bytes) -> None:
    data = MAGIC + reference_encoding(tree)
    bounds = sorted({0, len(data) + len(tail), *(c % (len(data) + len(tail) + 1) for c in cuts)})
    stream = data + tail
    reader = NarReader()
    events: list[NarEvent] = []
    for a, b in itertools.pairwise(bounds):
        events += reader.feed(stream[a:b])
    reader.finish()
    assert merged(events) == merged(events_of(tree))
    assert reader.unused_data == tail
    assert reader.offset == len(data)
