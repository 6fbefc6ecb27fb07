"""Where nixdist keeps its state (design.md §5).

The ``state-dir`` setting (`nixdist.settings`: ``$NIXDIST_STATE_DIR``, the config file's
``state-dir``, else ``/var/lib/nixdist`` for root and ``$XDG_STATE_HOME/nixdist`` (default
``~/.local/state/nixdist``) for anyone else). Slot locks are not here: they stay in Nix's
``current-load`` directory (`nixdist.state.slots`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    return load_settings(environ).state_dir
