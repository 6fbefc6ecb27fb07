"""What the hook writes into the history as it works, never failing a build over it.

`History` writes through `nixdist.state.advisory.Advisory`: a write that fails is dropped
after one debug line, and the build goes on. `BuildRecord` follows one remote build attempt
through its phases, with the time and bytes of each (design.md §3: "record in history").
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Final

from nixdist.state.paths import pruned_marker
from nixdist.state.rows import Outcome, Phase

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nixdist.state.advisory import Advisory
    from nixdist.state.db import StateDB


DAY_S: Final = 86400.0
#: The history is pruned at most this often (by whichever hook comes first).
PRUNE_EVERY_S: Final = DAY_S


class History:
    """The hook's writer of decisions and build attempts."""

    def __init__(self, advice: Advisory) -> None:
        self._advice = advice

    def _write(self, action: Callable[[StateDB], object]) -> object:
        return self._advice(action, None)

    def decision(
        self,
        *,
        drv_path: str,
        system: str,
        features: Sequence[str],
        decision: str,
        machine: str | None,
        reasons: Sequence[str],
    ) -> None:
        self._write(
            lambda db: db.record_decision(
                drv_path=drv_path,
                system=system,
                features=features,
                decision=decision,
                machine=machine,
                reasons=reasons,
            )
        )

    def prune_if_due(self, *, keep_days: float, now: float | None = None) -> None:
        """Forget what is older than `keep_days` (0: keep everything), at most once a day for
        every process of this state directory (the marker's mtime says when it was done)."""
        root = self._advice.root
        if root is None or keep_days <= 0:
            return
        now = time.time() if now is None else now
        marker = pruned_marker(root)
        try:
            if now - marker.stat().st_mtime < PRUNE_EVERY_S:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        if self._write(lambda db: db.prune(now - keep_days * DAY_S)) is not None:
            with contextlib.suppress(OSError):
                marker.touch()
                os.utime(marker, (now, now))

    def start_build(self, *, drv_path: str, machine: str, attempt: int) -> BuildRecord:
        build_id = self._write(
            lambda db: db.start_build(drv_path=drv_path, machine=machine, attempt=attempt)
        )
        return BuildRecord(self, build_id if isinstance(build_id, int) else None)

    def _update(self, build_id: int | None, **columns: object) -> None:
        if build_id is not None:
            self._write(lambda db: db.update_build(build_id, **columns))


class BuildRecord:
    """One remote build attempt, as it goes: `enter` each phase, then `finish`."""

    def __init__(self, history: History, build_id: int | None) -> None:
        self._history = history
        self.build_id = build_id
        self.phase = Phase.CONNECT
        self._phase_start = time.monotonic()

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self._phase_start = time.monotonic()
        self._history._update(self.build_id, phase=phase)  # noqa: SLF001 - its own writer

    def elapsed(self) -> float:
        """Seconds since the current phase began."""
        return time.monotonic() - self._phase_start

    def note(self, **columns: object) -> None:
        """Record numbers of the phase just done (``upload_s=…, upload_bytes=…``)."""
        self._history._update(self.build_id, **columns)  # noqa: SLF001

    def finish(self, status: Outcome, *, error: str | None = None) -> None:
        phase = Phase.DONE if status is Outcome.BUILT else self.phase
        self._history._update(  # noqa: SLF001
            self.build_id, status=status, error=error, phase=phase, finished=time.time()
        )
