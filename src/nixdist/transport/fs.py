"""Private directories: the state directory, its ssh control sockets and pinned host keys.

Control sockets give whoever can connect to them the builder's root shell, and the history
names every derivation built: these directories are for their owner only (mode 0700). A
directory that already exists with wider permissions and belongs to us is narrowed; one that
belongs to someone else is refused.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from nixdist.errors import TransportError

if TYPE_CHECKING:
    from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed, and make sure only we can use it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise TransportError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise TransportError(f"{path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path
