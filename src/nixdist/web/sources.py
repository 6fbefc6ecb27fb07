"""Where the dashboard reads from: the machines file, the state database and the slot locks.

Every request reads afresh — the machines file (an edit shows at the next poll), a newly
opened database connection (SQLite connections stay in the thread that made them, and
requests run in a thread pool) and the slot locks — and the report itself is
`nixdist.state.report.status_report`, the same one ``nixdist status`` prints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixdist.state.report import status_report

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from nixdist.model.machines import Machine
    from nixdist.state.db import StateDB
    from nixdist.state.report import StatusReport
    from nixdist.state.slots import SlotDirectory


@dataclass(frozen=True, slots=True, kw_only=True)
class Sources:
    """How to read the state. `open_db` returns None while there is no database yet."""

    machines: Callable[[], Sequence[Machine]]
    open_db: Callable[[], StateDB | None]
    slots: SlotDirectory
    recent: int = 50  # finished builds in ``/api/status``

    @contextlib.contextmanager
    def db(self) -> Iterator[StateDB | None]:
        """The database for one request, closed afterwards."""
        db = self.open_db()
        try:
            yield db
        finally:
            if db is not None:
                db.close()

    def status(self, *, recent: int | None = None) -> StatusReport:
        """The status report now (with `recent` finished builds, default `Sources.recent`)."""
        machines = self.machines()
        with self.db() as db:
            return status_report(
                machines, db, self.slots, recent=self.recent if recent is None else recent
            )
