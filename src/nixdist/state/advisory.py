"""The state database as advice: the one way the hook (and ``nixdist build``) use it.

History, builder health and load reports make builds better; none of them may make a build
fail. `Advisory` wraps an optional `StateDB`: an action that raises `StateError` (a full disk,
a read-only state directory, a database another version left behind, a lock held too long)
is dropped with one line through `on_error`, the caller gets its default, and the database is
not used again by this process, so one broken database costs one message, not one per write.
The commands a user runs (``status``, ``history``…) open the database directly and report its
errors (`nixdist.state.db.open_state_db`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from nixdist.errors import StateError
from nixdist.state.db import open_state_db

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nixdist.state.db import StateDB

_T = TypeVar("_T")


def _ignore(message: str) -> None:
    del message


class Advisory:
    """An optional state database whose failures are noted, never raised."""

    def __init__(self, db: StateDB | None, on_error: Callable[[str], None] = _ignore) -> None:
        self._db = db
        self._on_error = on_error

    @classmethod
    def open(cls, root: Path, on_error: Callable[[str], None] = _ignore) -> Advisory:
        """The database in the state directory `root` (created if needed), or none."""
        try:
            return cls(open_state_db(root), on_error)
        except StateError as err:
            on_error(f"nixdist: running without history, health and load reports: {err}")
            return cls(None, on_error)

    @property
    def available(self) -> bool:
        return self._db is not None

    @property
    def root(self) -> Path | None:
        """The state directory, while the database is in use."""
        return None if self._db is None else self._db.path.parent

    def __call__(self, action: Callable[[StateDB], _T], default: _T) -> _T:
        """`action` on the database; `default` when there is none or the action failed."""
        if self._db is None:
            return default
        try:
            return action(self._db)
        except StateError as err:
            self._on_error(f"nixdist: state database not used any more: {err}")
            self.close()
            return default

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
