"""NAR (Nix ARchive): the canonical serialisation of a file tree, without I/O.

A NAR is a sequence of wire strings (``u64(len) bytes zero-padding-to-8``, see
`nixdist.wire.primitives`). Every quoted token below is one such string::

    nar        = "nix-archive-1" node
    node       = "(" "type" type-body ")"
    type-body  = "regular" [ "executable" "" ] "contents" CONTENTS
               | "symlink" "target" TARGET
               | "directory" entry*
    entry      = "entry" "(" "name" NAME "node" node ")"

* ``CONTENTS`` is a string whose length is the file size: ``u64(size)``, the bytes, zero padding.
* ``executable`` is present iff the owner-execute bit is set. Nothing else about permissions,
  owners or times is stored. Only regular files, directories and symlinks exist.
* Entries of a directory are in strictly increasing byte-wise order of ``NAME``; a name is
  never empty, ``.`` or ``..``, and never contains ``/`` or NUL.
* A NAR is self-delimiting: a reader knows where it ends by parsing it. On the serve protocol
  the next reply follows the NAR directly, so the reader hands back what it did not use.
* The NAR hash of a store path is SHA-256 over these exact bytes; its narSize is their count.

Events
------
Both directions use the same events, describing the tree in NAR order (a pre-order walk,
entries of a directory in byte-wise order of their names)::

    Directory(path) <the entries' events> DirectoryEnd(path)
    Regular(path, executable, size) Contents(data)* -- the data totals `size` bytes
    Symlink(path, target)

`path` is a `NarPath`: the tuple of entry names from the root, ``()`` being the root itself.

`NarWriter` / `encode_nar` turn events into bytes; file contents arrive as `Contents` chunks
and are passed through, so a file is never held whole. `nixdist.wire.nar_reader.NarReader`
is a push decoder in the
style of h11: `feed(data)` returns the events that data completes, `done` says the NAR ended,
and `unused_data` holds the bytes after its end. Contents are cut from the fed chunks and
never accumulated, so decoding a large file costs about one copy of its bytes.

The building blocks (`NAR_START`, `encode_entry_start`, `DIRECTORY_START`, `encode_regular_start`,
`encode_regular_end`, `encode_symlink`, `NODE_END`, `ENTRY_END`) are the exact bytes of each part
of the grammar without any checks; `NarWriter` is made of them, and the filesystem dumper uses
them directly on its hot path.

Strictness and limits
---------------------
We write and accept only the canonical form (Nix 2.8's parser also tolerates, e.g., a regular
node without ``contents`` or ``executable`` after ``contents``; Nix never writes those, and the
NAR hash is over the exact bytes, so a non-canonical NAR could not round-trip anyway).
Nix 2.8 puts no explicit limit on names or targets, but the kernel does when the tree is
restored, so we check these before allocating anything:

* a name is at most `MAX_NAME_LEN` (255, Linux ``NAME_MAX``) bytes;
* a symlink target is 1 to `MAX_TARGET_LEN` (4095, ``PATH_MAX`` minus the NUL) bytes, no NUL;
* a token (``type``, ``entry``, ...) is at most `MAX_TOKEN_LEN` bytes;
* directories nest at most `MAX_DEPTH` levels below the root.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import LocalProtocolError, WireError
from nixdist.wire.primitives import encode_bytes, padding

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

NarPath = tuple[bytes, ...]

MAX_NAME_LEN: Final = 255
MAX_TARGET_LEN: Final = 4095
MAX_TOKEN_LEN: Final = 16
MAX_DEPTH: Final = 1024

NAR_MAGIC: Final = b"nix-archive-1"

_U64: Final = struct.Struct("<Q")


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    """A directory starts; its entries' events follow, then `DirectoryEnd` with the same path."""

    path: NarPath


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryEnd:
    path: NarPath


@dataclass(frozen=True, slots=True, kw_only=True)
class Regular:
    """A regular file of `size` bytes; `Contents` events carrying exactly `size` bytes follow."""

    path: NarPath
    executable: bool
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Contents:
    """A piece of the contents of the regular file announced last."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Symlink:
    path: NarPath
    target: bytes


NarEvent = Directory | DirectoryEnd | Regular | Contents | Symlink


def render_path(path: NarPath) -> str:
    """A NAR path for messages: ``'a/b'``, or ``'<root>'`` for the root."""
    if not path:
        return "<root>"
    return repr(b"/".join(path))[2:-1]


def name_problem(name: bytes) -> str | None:
    """Why `name` cannot be a directory entry name in a NAR, or None if it can."""
    if not name:
        return "empty name"
    if name in {b".", b".."}:
        return f"name {name!r} is not allowed"
    if b"/" in name:
        return f"name {name!r} contains '/'"
    if b"\0" in name:
        return f"name {name!r} contains NUL"
    if len(name) > MAX_NAME_LEN:
        return f"name of {len(name)} bytes is longer than {MAX_NAME_LEN}"
    return None


def target_problem(target: bytes) -> str | None:
    """Why `target` cannot be a symlink target in a NAR, or None if it can."""
    if not target:
        return "empty symlink target"
    if b"\0" in target:
        return f"symlink target {target[:64]!r} contains NUL"
    if len(target) > MAX_TARGET_LEN:
        return f"symlink target of {len(target)} bytes is longer than {MAX_TARGET_LEN}"
    return None


# --------------------------------------------------------------------------------------------
# Writer


def tokens(*tokens: bytes) -> bytes:
    return b"".join(encode_bytes(token) for token in tokens)


# Building blocks: the exact bytes of each part of the grammar. They check nothing; `NarWriter`
# puts them together with checks, and `nixdist.store.narfs` uses them directly, relying on the
# filesystem for valid, unique names.

NAR_START: Final = tokens(NAR_MAGIC)
DIRECTORY_START: Final = tokens(b"(", b"type", b"directory")
NODE_END: Final = tokens(b")")  # ends a node; the same token ends an entry
ENTRY_END: Final = NODE_END
_REGULAR_START: Final = tokens(b"(", b"type", b"regular", b"contents")
_EXECUTABLE_START: Final = tokens(b"(", b"type", b"regular", b"executable", b"", b"contents")
_SYMLINK_START: Final = tokens(b"(", b"type", b"symlink", b"target")
_ENTRY_NAME: Final = tokens(b"entry", b"(", b"name")
_NODE: Final = tokens(b"node")
_ZEROS: Final = bytes(8)
_REGULAR_END: Final = tuple(bytes(n) + NODE_END for n in range(8))  # by padding length
_COALESCE: Final = 64 * 1024


def encode_entry_start(name: bytes) -> bytes:
    """``"entry" "(" "name" NAME "node"``: what precedes a directory entry's node."""
    return b"".join((_ENTRY_NAME, _U64.pack(len(name)), name, _ZEROS[: -len(name) % 8], _NODE))


def encode_regular_start(executable: bool, size: int) -> bytes:
    """A regular node up to its contents: ``"(" "type" "regular" ["executable" ""] u64(size)``."""
    return (_EXECUTABLE_START if executable else _REGULAR_START) + _U64.pack(size)


def encode_regular_end(size: int) -> bytes:
    """The contents' padding and the node's ``")"``."""
    return _REGULAR_END[-size % 8]


def encode_symlink(target: bytes) -> bytes:
    """A whole symlink node."""
    return _SYMLINK_START + encode_bytes(target) + NODE_END


class NarWriter:
    """Encodes `NarEvent`s into NAR bytes, checking that they describe a valid tree.

    `send(event)` returns the bytes for one event (`Contents` data is returned as is).
    Events out of order raise `LocalProtocolError`; names or targets a NAR cannot hold raise
    `WireError`. `done` becomes true when the root node is complete.
    """

    __slots__ = ("_dirs", "_done", "_file_pad", "_file_remaining", "_in_file", "_started")

    def __init__(self) -> None:
        # open directories, outermost first: (path, name of the last entry written or None)
        self._dirs: list[tuple[NarPath, bytes | None]] = []
        self._started = False
        self._done = False
        self._in_file = False
        self._file_remaining = 0
        self._file_pad = 0

    @property
    def done(self) -> bool:
        return self._done

    def send(self, event: NarEvent) -> bytes:
        out: list[bytes] = []
        self.send_into(event, out)
        return b"".join(out)

    def send_into(self, event: NarEvent, out: list[bytes]) -> None:
        """Like `send`, but appends the pieces to `out` (no joining of large contents)."""
        if isinstance(event, Contents):
            self._contents(event.data, out)
            return
        if self._in_file:
            raise LocalProtocolError(
                f"{type(event).__name__} while {self._file_remaining} bytes of contents are due"
            )
        match event:
            case Regular():
                self._regular(event, out)
            case Symlink(path=path, target=target):
                problem = target_problem(target)
                if problem is not None:
                    raise WireError(f"cannot write {render_path(path)!r} to a NAR: {problem}")
                self._open_node(path, out)
                out.append(encode_symlink(target))
                self._close_node(out)
            case Directory(path=path):
                self._open_node(path, out)
                out.append(DIRECTORY_START)
                self._dirs.append((path, None))
            case DirectoryEnd(path=path):
                if not self._dirs or self._dirs[-1][0] != path:
                    raise LocalProtocolError(f"DirectoryEnd for {render_path(path)!r} is not open")
                self._dirs.pop()
                out.append(NODE_END)
                self._close_node(out)

    def _regular(self, event: Regular, out: list[bytes]) -> None:
        if event.size < 0:
            raise LocalProtocolError(f"negative file size {event.size}")
        self._open_node(event.path, out)
        out.append(encode_regular_start(event.executable, event.size))
        self._in_file = True
        self._file_remaining = event.size
        self._file_pad = padding(event.size)
        if event.size == 0:
            self._finish_file(out)

    def _contents(self, data: bytes, out: list[bytes]) -> None:
        if not self._in_file:
            raise LocalProtocolError("Contents outside a regular file")
        if len(data) > self._file_remaining:
            raise LocalProtocolError(
                f"{len(data)} bytes of contents but only {self._file_remaining} are due"
            )
        if data:
            out.append(data)
            self._file_remaining -= len(data)
            if self._file_remaining == 0:
                self._finish_file(out)

    def _finish_file(self, out: list[bytes]) -> None:
        out.append(_REGULAR_END[self._file_pad])
        self._in_file = False
        self._close_node(out)

    def _open_node(self, path: NarPath, out: list[bytes]) -> None:
        if self._done:
            raise LocalProtocolError(f"{render_path(path)!r} after the end of the NAR")
        if not self._started:
            if path:
                raise LocalProtocolError(f"the first event must be the root, not {path!r}")
            self._started = True
            out.append(NAR_START)
            return
        if not self._dirs:  # pragma: no cover - unreachable: _done is set when the root ends
            raise LocalProtocolError("no open directory")
        parent, last = self._dirs[-1]
        if len(path) != len(parent) + 1 or path[:-1] != parent:
            raise LocalProtocolError(
                f"{render_path(path)!r} is not an entry of the open directory "
                f"{render_path(parent)!r}"
            )
        name = path[-1]
        problem = name_problem(name)
        if problem is not None:
            raise WireError(f"cannot write {render_path(path)!r} to a NAR: {problem}")
        if last is not None and name <= last:
            raise WireError(
                f"cannot write {render_path(path)!r} to a NAR: entries of {render_path(parent)!r} "
                f"not in strictly increasing order ({name!r} after {last!r})"
            )
        if len(path) > MAX_DEPTH:
            raise WireError(f"cannot write {render_path(path)!r}: nested deeper than {MAX_DEPTH}")
        self._dirs[-1] = (parent, name)
        out.append(encode_entry_start(name))

    def _close_node(self, out: list[bytes]) -> None:
        if self._dirs:
            out.append(ENTRY_END)
        else:
            self._done = True


def encode_nar(events: Iterable[NarEvent]) -> Iterator[bytes]:
    """Encode a whole NAR, yielding chunks of at least 64 KiB (the last may be smaller).

    Contents chunks of 64 KiB or more are yielded as they are, without copying.
    """
    writer = NarWriter()
    pending: list[bytes] = []
    pending_len = 0
    for event in events:
        if isinstance(event, Contents) and len(event.data) >= _COALESCE:
            if pending:
                yield b"".join(pending)
                pending.clear()
                pending_len = 0
            tail: list[bytes] = []
            writer.send_into(event, tail)
            yield tail[0]
            pending.extend(tail[1:])
            pending_len += sum(len(piece) for piece in tail[1:])
            continue
        before = len(pending)
        writer.send_into(event, pending)
        pending_len += sum(len(piece) for piece in pending[before:])
        if pending_len >= _COALESCE:
            yield b"".join(pending)
            pending.clear()
            pending_len = 0
    if not writer.done:
        raise LocalProtocolError("the events ended before the NAR's root node was complete")
    if pending:
        yield b"".join(pending)
