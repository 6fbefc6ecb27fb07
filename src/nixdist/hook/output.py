"""The one writer of the hook's stderr.

In hook mode stderr (and stdout, the same pipe) belongs to Nix: it reads reply lines
(``# accept``), the machine name after an accept, and ``@nix {json}`` log lines from it
(nix-protocols.md §1.5-§1.7). Everything the hook says goes through `HookOutput`, so nothing
else may write to fd 1 or 2 (ruff's T20 bans `print`).

After ``# accept`` Nix drops plain lines, so user-visible text is always sent as ``@nix``
``msg`` lines, which Nix shows at their level (filtered by its own verbosity).
"""

from __future__ import annotations

import os
import threading

from nixdist.protocol.hook import Reply, encode_reply
from nixdist.protocol.logjson import (
    LogMessage,
    Verbosity,
    encode_log_line,
    error_line,
    msg_line,
    render_error,
)


class HookOutput:
    """Writes protocol replies and log messages to Nix, whole lines at a time."""

    def __init__(self, fd: int = 2, *, verbosity: Verbosity = Verbosity.INFO) -> None:
        self._fd = fd
        self.verbosity = verbosity
        self._lock = threading.Lock()

    def _write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def reply(self, reply: Reply, machine: str | None = None) -> None:
        self._write(encode_reply(reply, machine))

    def event(self, message: LogMessage) -> None:
        """Any ``@nix`` message (an activity's start, result or stop); Nix filters them."""
        self._write(encode_log_line(message))

    def wants(self, level: Verbosity) -> bool:
        """Whether messages of `level` are shown (to skip composing the others)."""
        return level <= self.verbosity

    def log(self, level: Verbosity, text: str) -> None:
        if level <= self.verbosity:
            self._write(msg_line(level, text))

    def error(self, text: str) -> None:
        """An error shown to the user as Nix shows its own (``error: …``)."""
        self._write(error_line(text))

    def warn(self, text: str) -> None:
        self.log(Verbosity.WARN, render_error("warning: ", text))

    def info(self, text: str) -> None:
        self.log(Verbosity.INFO, text)

    def debug(self, text: str) -> None:
        self.log(Verbosity.DEBUG, text)
