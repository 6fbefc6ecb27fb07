"""Reading what Nix sends on the hook's stdin (fd 0), message by message."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

from nixdist.errors import RemoteProtocolError
from nixdist.wire.primitives import maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.wire.primitives import Reader

_T = TypeVar("_T")


class NixInput:
    """A buffered reader of the hook protocol's requests from Nix."""

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._buf = bytearray()
        self.eof = False

    def recv(self, decode: Callable[[Reader], _T]) -> _T | None:
        """The next message, or None if Nix closed stdin before it began.

        EOF in the middle of a message is a `RemoteProtocolError`.
        """
        while True:
            done = maybe_decode(decode, self._buf)
            if done is not None:
                value, used = done
                del self._buf[:used]
                return value
            data = b"" if self.eof else os.read(self._fd, 64 * 1024)
            if not data:
                self.eof = True
                if self._buf:
                    raise RemoteProtocolError(
                        f"Nix closed the hook's stdin in the middle of a message "
                        f"({len(self._buf)} bytes pending)"
                    )
                return None
            self._buf += data
