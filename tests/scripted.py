"""`ScriptedChannel`: a store session's peer, replayed from the bytes it sends.

A `nixdist.transport.child.ByteChannel` whose peer's whole output is given up front (a
recorded or composed ``s2c`` stream) and whose stderr tail is given too; what the client
writes is kept in `sent` for the test to compare. Reading past the script is the peer closing
the connection. Fakes like this one belong to the middle layers' tests only: integration tests
talk to real Nix.
"""

from __future__ import annotations

from nixdist.errors import TransportError


class ScriptedChannel:
    """The peer's side of one session: `script` to read, `stderr` as its last words."""

    def __init__(self, script: bytes, *, stderr: str = "", chunk: int = 1 << 16) -> None:
        self._script = script
        self._pos = 0
        self._chunk = chunk
        self._stderr = stderr
        self.sent = bytearray()
        self.closed = False
        self.killed = False
        self.stderr_fd: int | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self.closed or self.killed:
            raise TransportError("scripted: write after close")
        self.sent += data

    def read(self, max_bytes: int = 1 << 16, *, timeout: float | None = None) -> bytes:
        del timeout  # everything the peer will ever say is here already
        take = min(max_bytes, self._chunk)
        data = self._script[self._pos : self._pos + take]
        self._pos += len(data)
        return data

    @property
    def unread(self) -> int:
        return len(self._script) - self._pos

    def forward_stderr_to(self, fd: int | None) -> None:
        self.stderr_fd = fd

    def closed_error(self, what: str) -> TransportError:
        detail = f": {self._stderr}" if self._stderr else ""
        return TransportError(f"scripted peer: {what}{detail}")

    def stderr_tail(self) -> str:
        return self._stderr

    def close(self, timeout: float = 10) -> int:
        del timeout
        self.closed = True
        return 0

    def kill(self) -> None:
        self.killed = True
