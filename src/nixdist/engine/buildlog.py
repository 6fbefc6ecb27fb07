"""Each remote build's log, kept where Nix keeps its own: ``nix log`` / ``nix-store -l`` work.

Nix stores a build's log as ``<log dir>/drvs/<first two characters of the .drv's basename>/
<the rest>.bz2``, the log directory being ``/nix/var/log/nix`` (``NIX_LOG_DIR`` overrides it)
beside the store, or under a chroot store's root. The log is spooled to an unlinked temporary
file while the build runs (a ``nix-store --serve`` builder writes it to the session's stderr,
a daemon sends it as log lines), then compressed into place; the last lines are kept for the
error message of a failed build, as Nix shows them.
"""

from __future__ import annotations

import bz2
import contextlib
import os
import posixpath
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.protocol.logjson import LOG_FILE_TYPE, Result
from nixdist.transport.child import write_all

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from nixdist.model.local_store import LocalStore
    from nixdist.protocol.logjson import LogMessage

#: Log lines shown with a failed build, as Nix's ``log-lines`` default.
TAIL_LINES: Final = 10
#: The most of a log kept in Nix's log store (the rest is dropped, and said to be).
MAX_LOG_BYTES: Final = 256 << 20


def log_dir(store: LocalStore, environ: Mapping[str, str]) -> str:
    """Where Nix keeps build logs for `store`."""
    if explicit := environ.get("NIX_LOG_DIR"):
        return explicit
    root = store.real_store_dir.removesuffix("/nix/store")
    return posixpath.join(root or "/", "nix/var/log/nix")


def log_path(directory: str, drv_path: str) -> str:
    base = posixpath.basename(drv_path)
    return posixpath.join(directory, "drvs", base[:2], base[2:] + ".bz2")


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """Where one build's log goes while it runs."""

    fd: int

    def on_message(self, message: LogMessage) -> None:
        """A daemon's log line (result 101) into the log; other messages are not the log."""
        if isinstance(message, Result) and message.type == LOG_FILE_TYPE:
            line = message.fields[0] if message.fields else ""
            write_all(self.fd, f"{line}\n".encode("utf-8", "surrogateescape"))


class BuildLog:
    """The logs of one run's builds."""

    def __init__(self, store: LocalStore, environ: Mapping[str, str]) -> None:
        self.directory = log_dir(store, environ)
        self._tails: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def capture(self, drv_path: str) -> Iterator[Capture]:
        """Spool the log of `drv_path`'s build; store it once the build is over."""
        with tempfile.TemporaryFile() as spool:
            yield Capture(fd=spool.fileno())
            spool.seek(0)
            data = spool.read(MAX_LOG_BYTES)
        lines = data.decode("utf-8", "replace").splitlines()
        with self._lock:
            self._tails[drv_path] = lines[-TAIL_LINES:]
        with contextlib.suppress(OSError):  # a log not kept never fails a build
            self._store(drv_path, data)

    def _store(self, drv_path: str, data: bytes) -> None:
        path = Path(log_path(self.directory, drv_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        temporary.write_bytes(bz2.compress(data))
        temporary.replace(path)

    def tail(self, drv_path: str) -> list[str]:
        with self._lock:
            return list(self._tails.get(drv_path, ()))

    def failure_message(self, drv_path: str, machine: str, error: str) -> str:
        """What Nix says of a failed build: its error, then the log's last lines."""
        said = error.strip() or f"builder for '{drv_path}' failed"
        tail = self.tail(drv_path)
        if not tail:
            return f"{said} (on '{machine}')"
        shown = "\n".join(f"> {line}" for line in tail)
        return f"{said} (on '{machine}');\nlast {len(tail)} log lines:\n{shown}"
