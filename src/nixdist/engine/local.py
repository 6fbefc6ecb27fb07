"""Builds this host runs itself: what no builder can take, when local jobs are allowed.

The local Nix builds it (``nix-store --realise``) with remote building off, so the build is
exactly the one ``nix-build`` would run here; its inputs are made valid first by the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.engine.nixcmd import run_nix

if TYPE_CHECKING:
    from collections.abc import Mapping


def realise_here(drv_path: str, environ: Mapping[str, str]) -> str | None:
    """Build `drv_path` with the local Nix; None when it was built, else Nix's error."""
    argv = ["nix-store", "--realise", drv_path, "--builders", "", "--max-jobs", "1"]
    done = run_nix(argv, environ)
    return None if done.status == 0 else done.error("nix-store --realise")
