"""Saying something once per Nix run, although Nix starts a new hook process per build.

Every hook process of one Nix build loop has the same parent (the ``nix-build`` process, or
the ``nix-daemon`` child serving one client). A marker file named after that parent and the
message is created with ``O_EXCL``: the first hook to create it speaks, the others stay quiet.
Markers of parents that have exited are removed when a new one is made.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from nixdist.state.paths import once_dir

if TYPE_CHECKING:
    from pathlib import Path


def first_time(state_dir: Path, message: str, *, parent: int | None = None) -> bool:
    """True for the first caller with this `message` under this parent process."""
    import hashlib  # noqa: PLC0415 - only when there is something to say (the hook starts fast)

    parent = os.getppid() if parent is None else parent
    directory = once_dir(state_dir)
    digest = hashlib.sha256(message.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / f"{parent}-{digest}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except OSError:
        return True  # no state directory: better said every time than never
    os.close(fd)
    _forget_exited(directory, keep=parent)
    return True


def _forget_exited(directory: Path, *, keep: int) -> None:
    with contextlib.suppress(OSError):
        for marker in directory.iterdir():
            pid = marker.name.partition("-")[0]
            if pid.isdigit() and int(pid) != keep and not os.path.exists(f"/proc/{pid}"):  # noqa: PTH110 - one stat
                marker.unlink(missing_ok=True)
