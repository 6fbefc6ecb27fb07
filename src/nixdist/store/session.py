"""`WireSession`: the byte plumbing every store protocol session shares.

A session is a `Channel` (a child process: ssh, or a local ``nix-store``/``nix-daemon``) and
the bytes read from it but not decoded yet. Replies are read into that buffer until their
sans-IO decoder completes (``maybe_decode``); a NAR, which only its own grammar delimits,
streams through `stream_nar` as it arrives. Every wait is bounded by the session's idle
timeout (or the greeting's deadline).

`blames_peer` marks the errors escaping a store's method with the store's name, so the hook
can tell a lost builder (fail over) from a failing local store (give up).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from nixdist.errors import NixdistError, RemoteProtocolError, WireError
from nixdist.wire.nar_reader import NarReader
from nixdist.wire.primitives import Reader, maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nixdist.model.store_path import StorePath
    from nixdist.transport.child import ByteChannel

_T = TypeVar("_T")
_P = ParamSpec("_P")


class _Named(Protocol):
    name: str


_S = TypeVar("_S", bound=_Named)


def blames_peer(
    method: Callable[Concatenate[_S, _P], _T],
) -> Callable[Concatenate[_S, _P], _T]:
    """Errors escaping `method` name its store as their `peer`, unless one is already named
    (an error from the source store of a copy passes through the destination's method)."""

    @functools.wraps(method)
    def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except NixdistError as err:
            if err.peer is None:
                err.peer = self.name
            raise

    return wrapper


class WireSession:
    """A `Channel` and what was read from it but not decoded yet."""

    def __init__(self, channel: ByteChannel, *, name: str, idle_timeout: float | None) -> None:
        self.channel = channel
        self.name = name
        self.idle_timeout = idle_timeout
        self.buffer = bytearray()

    def send(self, data: bytes | memoryview) -> None:
        self.channel.write(data)

    def recv(self, decode: Callable[[Reader], _T], *, timeout: float | None = None) -> _T:
        """The next value `decode` reads, waiting at most `timeout` seconds in all (else the
        idle timeout between reads)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = maybe_decode(decode, self.buffer)
            if done is not None:
                value, used = done
                del self.buffer[:used]
                return value
            left = self.idle_timeout if deadline is None else max(0.0, deadline - time.monotonic())
            data = self.channel.read(timeout=left)
            if not data:
                raise self.channel.closed_error("the connection closed in the middle of a reply")
            self.buffer += data

    def stream_nar(self, path: StorePath) -> Iterator[bytes]:
        """The NAR of `path` that comes next, as it arrives, checked for well-formedness; what
        follows it stays in the buffer. Must be consumed to the end before the next reply."""
        reader = NarReader(contents=False)
        pending = bytes(self.buffer)
        self.buffer.clear()
        while True:
            if not pending:
                pending = self.channel.read(timeout=self.idle_timeout)
                if not pending:
                    raise self.channel.closed_error(f"the connection closed while sending {path}")
            try:
                reader.feed(pending)
            except WireError as err:
                raise RemoteProtocolError(
                    f"'{self.name}' sent a bad NAR for {path}: {err}"
                ) from err
            if reader.done:
                unused = reader.unused_data
                yield pending[: len(pending) - len(unused)]
                self.buffer += unused
                return
            yield pending
            pending = b""
