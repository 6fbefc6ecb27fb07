"""Where nixdist keeps its state (design.md §5).

``$NIXDIST_STATE_DIR`` if set; otherwise ``/var/lib/nixdist`` for root and
``$XDG_STATE_HOME/nixdist`` (default ``~/.local/state/nixdist``) for anyone else. Slot locks
are not here: they stay in Nix's ``current-load`` directory (`nixdist.state.slots`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit := env.get("NIXDIST_STATE_DIR"):
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/nixdist")
    xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "state")
    return Path(xdg) / "nixdist"
