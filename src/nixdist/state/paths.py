"""The state directory and everything in it: its layout is here and nowhere else (design.md §5).

The directory is the ``state-dir`` setting (`nixdist.settings`: ``$NIXDIST_STATE_DIR``, the
config file's ``state-dir``, else ``/var/lib/nixdist`` for root and
``$XDG_STATE_HOME/nixdist`` (default ``~/.local/state/nixdist``) for anyone else), mode 0700::

    <state dir>/
        nixdist.db           history, builder health, load reports (`nixdist.state.db`)
        ssh/                 control sockets, pinned host keys, master logs
                             (`nixdist.transport.openssh.ControlMasters`)
        once/                "said once per Nix run" markers (`nixdist.state.once`)
        uploads/<builder>/   claims on inputs being sent to a builder (`nixdist.store.claims`)
        pruned               its mtime: when the history was last pruned (`nixdist.state.history`)

Slot locks are not here: they stay in Nix's ``current-load`` directory, shared with
``build-remote`` (`nixdist.state.slots`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.settings import load_settings
from nixdist.state.slots import escape_uri

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    return load_settings(environ).state_dir


def db_path(root: Path) -> Path:
    return root / "nixdist.db"


def ssh_dir(root: Path) -> Path:
    return root / "ssh"


def once_dir(root: Path) -> Path:
    return root / "once"


def uploads_dir(root: Path, uri: str) -> Path:
    """Where the claims on inputs sent to the builder `uri` are."""
    return root / "uploads" / escape_uri(uri)


def pruned_marker(root: Path) -> Path:
    return root / "pruned"
