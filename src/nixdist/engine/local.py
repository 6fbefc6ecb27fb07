"""Builds this host runs itself: what no builder can take, when local jobs are allowed.

The local Nix builds it (``nix-store --realise``) with remote building off, so the build is
exactly the one ``nix-build`` would run here; its inputs are made valid first by the run.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The most of nix-store's stderr kept for the error message.
MAX_SAID: Final = 64 << 10


def realise_here(drv_path: str, environ: Mapping[str, str]) -> str | None:
    """Build `drv_path` with the local Nix; None when it was built, else Nix's error."""
    argv = ["nix-store", "--realise", drv_path, "--builders", "", "--max-jobs", "1"]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(environ),
            check=False,
        )
    except OSError as err:
        return f"cannot run nix-store: {err}"
    if done.returncode == 0:
        return None
    said = done.stderr[-MAX_SAID:].decode(errors="replace").strip()
    return said or f"nix-store --realise exited with status {done.returncode}"
