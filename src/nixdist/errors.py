"""The one exception hierarchy of nixdist.

Errors are split by layer, and errors caused by the peer are kept apart from our own bugs.
Only the process edges (`cli.main`, `hook.main`, the web handler) catch broadly and turn
exceptions into exit codes or messages.
"""

from __future__ import annotations


class NixdistError(Exception):
    """Root of every error nixdist raises on purpose.

    `peer` names the party whose side failed when that is known — a `ServeStore` sets it to
    its own name on every error that passes through it — so that the hook can tell a lost
    builder (fail over) from a failing local store (give up).
    """

    peer: str | None = None


class WireError(NixdistError, ValueError):
    """Malformed bytes: bad padding, an oversize length, truncated or trailing data."""


class ParseError(NixdistError, ValueError):
    """Text that should denote a Nix value does not (a store path, a hash, a derivation)."""


class ProtocolError(NixdistError):
    """A protocol was not followed."""


class LocalProtocolError(ProtocolError):
    """We tried something illegal in the current state (a bug in nixdist)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal (bad magic, unknown reply, unexpected data)."""


class StoreRefusedError(NixdistError):
    """A store answered a request with an error of its own (a daemon's ``STDERR_ERROR``:
    a path without a trusted signature, a build it may not run). The store is reachable and
    speaks the protocol, so it is not lost: nothing fails over because of it."""


class StateError(NixdistError):
    """nixdist's state database cannot be opened, read or written (the history, health and
    load reports are advice: a hook goes on without them)."""


class TransportError(NixdistError):
    """Could not connect, authenticate, or the connection ended early."""


class TransportTimeoutError(TransportError):
    """A transport operation took longer than allowed."""


class ConfigError(NixdistError):
    """A configuration file or setting is wrong.

    `str(err)` is one line naming the file, the line and the field, e.g.
    ``/etc/nix/machines:3: field 4 (max jobs): 'x' is not a non-negative integer``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<builders>"
        if self.line is not None:
            where += f":{self.line}"
        what = f"field {self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class FarmError(NixdistError):
    """The local farm could not do what was asked (start a builder, find its processes, …)."""


class BuildError(NixdistError):
    """A remote build failed: carries the derivation, the machine and the log tail."""

    def __init__(self, message: str, *, drv_path: str = "", machine: str = "") -> None:
        self.drv_path = drv_path
        self.machine = machine
        super().__init__(message)
