"""Reading NARs as they stream: `NarReader`, a push decoder of the grammar `nixdist.wire.nar`
writes, checking every limit and rule there as bytes arrive; `decode_nar` and
`nar_size_and_hash` for whole NARs.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Final

from nixdist.errors import WireError
from nixdist.wire.nar import (
    MAX_DEPTH,
    MAX_NAME_LEN,
    MAX_TARGET_LEN,
    MAX_TOKEN_LEN,
    NAR_MAGIC,
    Contents,
    Directory,
    DirectoryEnd,
    NarEvent,
    NarPath,
    Regular,
    Symlink,
    name_problem,
    render_path,
    target_problem,
    tokens,
)
from nixdist.wire.primitives import encode_bytes, padding
from nixdist.wire.push import PushDecoder

if TYPE_CHECKING:
    from collections.abc import Iterable

_U64: Final = struct.Struct("<Q")

# --------------------------------------------------------------------------------------------
# Reader

# Reader states. Each reads one token (or a fixed run of tokens) or a piece of contents.
_S_EXPECT: Final = 0  # fixed bytes `_lit` (encoded tokens `_lit_tokens`), then `_next`
_S_TYPE: Final = 1  # "regular" | "symlink" | "directory"
_S_REGULAR: Final = 2  # "executable" | "contents"
_S_SIZE: Final = 3  # u64 contents size
_S_CONTENTS: Final = 4  # raw contents bytes
_S_PADDING: Final = 5  # zero padding after the contents
_S_TARGET: Final = 6  # symlink target string
_S_DIR: Final = 7  # ")" | "entry"
_S_NAME: Final = 8  # entry name string
_S_NODE_DONE: Final = 9  # a node's ")" has been read: pop to the parent
_S_DONE: Final = 10

_LIT_START: Final = (NAR_MAGIC, b"(", b"type")
_LIT_EXECUTABLE: Final = (b"", b"contents")
_LIT_CLOSE: Final = (b")",)
_LIT_TARGET: Final = (b"target",)
_LIT_ENTRY: Final = (b"(", b"name")
_LIT_NODE: Final = (b"node", b"(", b"type")


class NarReader(PushDecoder[NarEvent]):
    """Push decoder for one NAR.

    Call `feed(data)` with successive pieces of the byte stream; it returns the events the
    pieces complete. Contents come out as `Contents` chunks cut from the fed data. When the
    root node is complete `done` is true, and bytes fed after the end are kept in
    `unused_data` (feeding more after the end appends to it). Call `finish()` at the end of
    input to check that the NAR was complete. Malformed input raises `WireError` naming the
    offset (from the start of the NAR) and the path in the tree; after an error the reader
    must not be used again.

    With ``contents=False`` the reader checks the structure but emits no `Contents` events,
    which spares copying the data (for finding where a NAR ends, e.g. in an export stream).
    """

    __slots__ = (
        "_dirs",
        "_emit_contents",
        "_executable",
        "_lit",
        "_lit_tokens",
        "_next",
        "_path",
        "_remaining",
        "_size",
        "_state",
    )

    def __init__(self, *, contents: bool = True) -> None:
        self._emit_contents = contents
        super().__init__()
        self._state = _S_EXPECT
        self._lit_tokens: tuple[bytes, ...] = _LIT_START
        self._lit = tokens(*_LIT_START)
        self._next = _S_TYPE
        self._path: NarPath = ()
        # open directories, outermost first: (path, last entry name or None)
        self._dirs: list[tuple[NarPath, bytes | None]] = []
        self._executable = False
        self._size = 0
        self._remaining = 0

    def _is_done(self) -> bool:
        return self._state == _S_DONE

    def finish(self) -> None:
        """Declare the end of input: raise `WireError` unless the NAR is complete."""
        if not self.done:
            raise self._error("truncated NAR: the input ended inside the archive")

    # -- the state machine ------------------------------------------------------------------

    def _step(self, events: list[NarEvent]) -> bool:  # noqa: C901, PLR0911, PLR0912 - one branch per state keeps the machine in one place
        """Advance by one token; False when more data is needed (or the NAR is done)."""
        state = self._state
        if state == _S_CONTENTS:
            return self._step_contents(events)
        if state == _S_EXPECT:
            return self._step_expect()
        if state == _S_NODE_DONE:
            self._node_done()
            return True
        if state == _S_DONE:
            return False
        if state == _S_PADDING:
            return self._step_padding()
        if state == _S_SIZE:
            if len(self._buf) - self._pos < _U64.size:
                return False
            (size,) = _U64.unpack_from(self._buf, self._pos)
            self._pos += 8
            self._size = self._remaining = size
            events.append(Regular(path=self._path, executable=self._executable, size=size))
            self._state = _S_CONTENTS if size else _S_PADDING
            return True
        if state == _S_NAME:
            name = self._string(MAX_NAME_LEN, "entry name")
            if name is None:
                return False
            self._enter(name)
            return True
        if state == _S_TARGET:
            target = self._string(MAX_TARGET_LEN, "symlink target")
            if target is None:
                return False
            problem = target_problem(target)
            if problem is not None:
                raise self._error(problem, back=8 + len(target) + padding(len(target)))
            events.append(Symlink(path=self._path, target=target))
            self._expect(_LIT_CLOSE, _S_NODE_DONE)
            return True
        # fast paths for the commonest runs of tokens; anything else goes token by token
        if state == _S_DIR and self._buf.startswith(_FAST_ENTRY, self._pos):
            self._pos += len(_FAST_ENTRY)
            self._state = _S_NAME
            return True
        if state == _S_TYPE and self._buf.startswith(_FAST_REGULAR, self._pos):
            self._pos += len(_FAST_REGULAR)
            self._executable = False
            self._state = _S_SIZE
            return True
        token = self._string(MAX_TOKEN_LEN, "token")
        if token is None:
            return False
        if state == _S_DIR:
            self._step_dir(token, events)
        elif state == _S_TYPE:
            self._step_type(token, events)
        else:  # _S_REGULAR
            self._step_regular(token)
        return True

    def _step_padding(self) -> bool:
        pad = padding(self._size)
        if len(self._buf) - self._pos < pad:
            return False
        if any(self._buf[self._pos : self._pos + pad]):
            raise self._error("non-zero padding after file contents")
        self._pos += pad
        if self._dirs and self._buf.startswith(_FAST_CLOSE_ENTRY, self._pos):
            # fast path: the node's ")" and its entry's ")"
            self._pos += len(_FAST_CLOSE_ENTRY)
            self._path = self._dirs[-1][0]
            self._state = _S_DIR
            return True
        self._expect(_LIT_CLOSE, _S_NODE_DONE)
        return True

    def _step_contents(self, events: list[NarEvent]) -> bool:
        available = len(self._buf) - self._pos
        if available == 0:
            return False
        take = min(available, self._remaining)
        if self._emit_contents:
            # slicing a whole bytes object returns it without copying
            events.append(Contents(data=self._buf[self._pos : self._pos + take]))
        self._pos += take
        self._remaining -= take
        if self._remaining == 0:
            self._state = _S_PADDING
        return True

    def _step_expect(self) -> bool:
        lit = self._lit
        if self._buf.startswith(lit, self._pos):
            self._pos += len(lit)
            self._state = self._next
            return True
        self._diagnose_expect()
        return False

    def _diagnose_expect(self) -> None:
        """Raise if the buffered bytes already contradict the expected tokens.

        The message shows the offending token, so we wait until it is complete unless its
        length alone rules it out (the message is then the same however the input is split).
        """
        buf, pos = self._buf, self._pos
        for want in self._lit_tokens:
            encoded = encode_bytes(want)
            if buf[pos : pos + len(encoded)] == encoded:
                pos += len(encoded)
                continue
            if len(buf) - pos < _U64.size:
                return
            (length,) = _U64.unpack_from(buf, pos)
            end = pos + _U64.size + length
            if length <= MAX_TOKEN_LEN and len(buf) < end + padding(length):
                return
            self._pos = pos  # for the offset in the message
            if length > MAX_TOKEN_LEN:
                raise self._error(f"expected {want.decode()!r}, got a string of {length} bytes")
            got = buf[pos + _U64.size : end]
            if any(buf[end : end + padding(length)]):
                raise self._error(f"expected {want.decode()!r}, got {got!r} with non-zero padding")
            raise self._error(f"expected {want.decode()!r}, got {got!r}")

    def _expect(self, words: tuple[bytes, ...], then: int) -> None:
        self._state = _S_EXPECT
        self._lit_tokens = words
        self._lit = _LITERALS[words]
        self._next = then

    def _string(self, limit: int, what: str) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _U64.size:
            return None
        (length,) = _U64.unpack_from(buf, pos)
        if length > limit:
            raise self._error(f"{what} of {length} bytes is longer than {limit}")
        start = pos + 8
        end = start + length
        padded = end + padding(length)
        if len(buf) < padded:
            return None
        if any(buf[end:padded]):
            raise self._error(f"non-zero padding after {what}")
        self._pos = padded
        return buf[start:end]

    def _step_type(self, token: bytes, events: list[NarEvent]) -> None:
        if token == b"regular":
            self._executable = False
            self._state = _S_REGULAR
        elif token == b"directory":
            events.append(Directory(path=self._path))
            self._dirs.append((self._path, None))
            self._state = _S_DIR
        elif token == b"symlink":
            self._expect(_LIT_TARGET, _S_TARGET)
        else:
            raise self._error(f"unknown file type {token!r}", back=_token_size(token))

    def _step_regular(self, token: bytes) -> None:
        if token == b"contents":
            self._state = _S_SIZE
        elif token == b"executable":
            self._executable = True
            self._expect(_LIT_EXECUTABLE, _S_SIZE)
        else:
            raise self._error(
                f"expected 'executable' or 'contents', got {token!r}", back=_token_size(token)
            )

    def _step_dir(self, token: bytes, events: list[NarEvent]) -> None:
        if token == b")":
            events.append(DirectoryEnd(path=self._path))
            self._dirs.pop()
            self._node_done()
        elif token == b"entry":
            self._expect(_LIT_ENTRY, _S_NAME)
        else:
            raise self._error(f"expected 'entry' or ')', got {token!r}", back=_token_size(token))

    def _enter(self, name: bytes) -> None:
        back = _token_size(name)
        parent, last = self._dirs[-1]
        problem = name_problem(name)
        if problem is not None:
            raise self._error(f"invalid entry {problem}", back=back)
        if last is not None and name <= last:
            what = "duplicate" if name == last else "unsorted"
            raise self._error(f"{what} entry {name!r} after {last!r}", back=back)
        if len(parent) >= MAX_DEPTH:
            raise self._error(f"directories nested deeper than {MAX_DEPTH}", back=back)
        self._dirs[-1] = (parent, name)
        self._path = (*parent, name)
        self._expect(_LIT_NODE, _S_TYPE)

    def _node_done(self) -> None:
        """The current node's ")" was read: go back to its directory, or finish."""
        if not self._dirs:
            self._state = _S_DONE
            return
        self._path = self._dirs[-1][0]
        self._expect(_LIT_CLOSE, _S_DIR)  # the entry's ")"

    def _error(self, message: str, *, back: int = 0) -> WireError:
        offset = self._base + self._pos - back
        return WireError(f"bad NAR at offset {offset} ({render_path(self._path)!r}): {message}")


def _token_size(token: bytes) -> int:
    return 8 + len(token) + padding(len(token))


_FAST_ENTRY: Final = tokens(b"entry", b"(", b"name")
_FAST_REGULAR: Final = tokens(b"regular", b"contents")
_FAST_CLOSE_ENTRY: Final = tokens(b")", b")")

_LITERALS: Final[dict[tuple[bytes, ...], bytes]] = {
    words: tokens(*words)
    for words in (_LIT_START, _LIT_EXECUTABLE, _LIT_CLOSE, _LIT_TARGET, _LIT_ENTRY, _LIT_NODE)
}


def decode_nar(data: bytes) -> list[NarEvent]:
    """Decode a complete NAR held in memory; trailing bytes are an error."""
    reader = NarReader()
    events = reader.feed(data)
    reader.finish()
    if reader.unused_data:
        raise WireError(f"{len(reader.unused_data)} bytes after the end of the NAR")
    return events


def nar_size_and_hash(chunks: Iterable[bytes]) -> tuple[int, bytes]:
    """The narSize and the SHA-256 digest (narHash) of a NAR given as chunks."""

    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.digest()
