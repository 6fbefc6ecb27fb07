"""`WireSession`: the byte plumbing every store protocol session shares.

A session is a `Channel` (a child process: ssh, or a local ``nix-store``/``nix-daemon``) and
the bytes read from it but not decoded yet. Replies are read into that buffer until their
sans-IO decoder completes (``maybe_decode``); a NAR, which only its own grammar delimits,
streams through `stream_nar` as it arrives. Every wait is bounded by the session's idle
timeout (or the greeting's deadline).

`blames_peer` marks the errors escaping a store's method with the store's name, so the hook
can tell a lost builder (fail over) from a failing local store (give up); `blamed` does the
same for a NAR streamed out of a store.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from nixdist.errors import NixdistError, RemoteProtocolError, TransportError, WireError
from nixdist.wire.nar_reader import NarReader
from nixdist.wire.primitives import Reader, maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from nixdist.model.path_info import PathInfo
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


def blamed(name: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` (a NAR a store streams), errors naming store `name` as their `peer`."""
    try:
        yield from chunks
    except NixdistError as err:
        if err.peer is None:
            err.peer = name
        raise


class WireSession:
    """A `Channel` and what was read from it but not decoded yet."""

    def __init__(self, channel: ByteChannel, *, name: str, idle_timeout: float | None) -> None:
        self.channel = channel
        self.name = name
        self.idle_timeout = idle_timeout
        self.buffer = bytearray()

    def send(self, data: bytes | memoryview) -> None:
        self.channel.write(data)

    def send_nar(
        self,
        info: PathInfo,
        nar: Iterable[bytes],
        frame: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Send `nar` (each chunk through `frame`, if given), which must total exactly
        ``info.nar_size`` bytes: otherwise the peer is waiting for bytes that will never be
        right, and the session is ended."""
        sent = 0
        for chunk in nar:
            sent += len(chunk)
            if sent > info.nar_size:
                break
            self.send(chunk if frame is None else frame(chunk))
        if sent != info.nar_size:
            self.channel.kill()
            raise RemoteProtocolError(
                f"NAR of {info.path} is {sent} bytes, its path info says {info.nar_size}"
            )

    def abort(self) -> None:
        """End the session at once (kill the peer): after a failure mid-command it may be
        blocked writing a reply nobody will read."""
        self.channel.kill()

    def close(self) -> None:
        """End the session (EOF on the peer's stdin) and reap it."""
        try:
            self.channel.close()
        except TransportError:
            self.channel.kill()

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
