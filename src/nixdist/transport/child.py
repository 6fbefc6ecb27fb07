"""A child process whose stdin and stdout carry a byte protocol.

The child's stderr is read by a background thread that keeps the last lines (for error
messages: what ssh or ``nix-store`` said before the pipe closed) and, once `forward_stderr_to`
is called, also copies everything to a file descriptor — in hook mode fd 4, Nix's build log.
Before that (while connecting, before ``# accept``), nothing is written to the build log:
bytes written to fd 4 before accepting would land in the log of whichever derivation is
accepted next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import threading
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from nixdist.errors import TransportError, TransportTimeoutError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

READ_SIZE: Final = 1024 * 1024
#: Pipe capacity asked for (Linux ``F_SETPIPE_SZ``): NARs stream through these pipes, and the
#: default 64 KiB makes every copy a ping-pong of small reads and writes.
PIPE_SIZE: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031
_TAIL_BYTES: Final = 8 * 1024


class _StderrPump:
    """Reads a pipe until EOF, keeping a tail and optionally copying to a descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._lock = threading.Lock()
        self._forward_fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="stderr-pump", daemon=True)
        self._thread.start()

    def forward_to(self, fd: int | None) -> None:
        with self._lock:
            self._forward_fd = fd

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except OSError:
                break
            if not data:
                break
            with self._lock:
                self._tail.append(data)
                self._tail_len += len(data)
                while self._tail_len - len(self._tail[0]) >= _TAIL_BYTES:
                    self._tail_len -= len(self._tail.popleft())
                forward = self._forward_fd
            if forward is not None:
                with contextlib.suppress(OSError):
                    write_all(forward, data)
        os.close(self._fd)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self) -> str:
        with self._lock:
            text = b"".join(self._tail)[-_TAIL_BYTES:]
        return text.decode("utf-8", "replace").strip()


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class ByteChannel(Protocol):
    """What a store session needs of its peer: bytes both ways, what it said on stderr, and
    an end. `Channel` is the real one (a child process: ssh, nix-store, nix-daemon); tests
    script one to replay a peer's side of a session."""

    def write(self, data: bytes | memoryview) -> None: ...

    def read(self, max_bytes: int = ..., *, timeout: float | None = None) -> bytes:
        """Up to `max_bytes` bytes; b"" at end of stream."""
        ...

    def forward_stderr_to(self, fd: int | None) -> None: ...

    def closed_error(self, what: str) -> TransportError:
        """The error for a peer that went away, with what it printed last."""
        ...

    def stderr_tail(self) -> str: ...

    def close(self, timeout: float = ...) -> int: ...

    def kill(self) -> None: ...


class Channel:
    """A running child process speaking a protocol on its stdin and stdout."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        description: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.description = description
        self.argv = list(argv)
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
                bufsize=0,
                close_fds=True,
            )
        except OSError as err:
            raise TransportError(f"cannot start {description}: {err}") from err
        assert self._proc.stdin is not None  # noqa: S101 - Popen with PIPE guarantees it
        assert self._proc.stdout is not None  # noqa: S101
        assert self._proc.stderr is not None  # noqa: S101
        self._stdin_fd: int | None = self._proc.stdin.fileno()
        self._stdout_fd = self._proc.stdout.fileno()
        for fd in (self._stdin_fd, self._stdout_fd):
            with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        self._stderr = _StderrPump(os.dup(self._proc.stderr.fileno()))
        self._proc.stderr.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def forward_stderr_to(self, fd: int | None) -> None:
        """From now on copy the child's stderr to `fd` (None: only keep the tail)."""
        self._stderr.forward_to(fd)

    def write(self, data: bytes | memoryview) -> None:
        if self._stdin_fd is None:
            raise TransportError(f"{self.description}: write after close")
        try:
            write_all(self._stdin_fd, data)
        except (BrokenPipeError, ConnectionResetError) as err:
            raise self.closed_error("the connection closed while sending") from err

    def read(self, max_bytes: int = READ_SIZE, *, timeout: float | None = None) -> bytes:
        """Up to `max_bytes` bytes; b"" at end of stream.

        With a `timeout` (seconds), `TransportTimeoutError` if nothing arrives in time.
        """
        try:
            if timeout is not None:
                ready, _, _ = select.select([self._stdout_fd], [], [], timeout)
                if not ready:
                    raise TransportTimeoutError(
                        f"{self.description}: no answer within {timeout:g} seconds"
                    )
            return os.read(self._stdout_fd, max_bytes)
        except OSError as err:
            raise TransportError(f"{self.description}: read failed: {err}") from err

    def close_stdin(self) -> None:
        if self._stdin_fd is not None:
            assert self._proc.stdin is not None  # noqa: S101
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            self._stdin_fd = None

    def closed_error(self, what: str) -> TransportError:
        """A TransportError saying the child went away, with what it printed last."""
        try:
            status = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        self._stderr.join(timeout=1)
        said = self.stderr_tail()
        detail = f": {said}" if said else ""
        code = f" (exit status {status})" if status else ""
        return TransportError(f"{self.description}: {what}{code}{detail}")

    def stderr_tail(self) -> str:
        return self._stderr.tail()

    def close(self, timeout: float = 10) -> int:
        """Close stdin (the protocol's end of session) and wait for the child."""
        self.close_stdin()
        try:
            status = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            status = self._proc.wait()
        assert self._proc.stdout is not None  # noqa: S101
        self._proc.stdout.close()
        self._stderr.join(timeout=1)
        return status

    def kill(self) -> None:
        """End the child at once, reap it and close our ends of its pipes."""
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._proc.wait()
        self.close_stdin()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
