"""What Nix would fetch rather than build: fetched here first, as ``nix-build`` would.

Before planning, the local Nix is asked what realising the targets would take
(``nix-store --realise --dry-run``: "these N paths will be fetched", Nix 2.8 to 2.35 alike):
the paths its substituters have are fetched here with ``nix-store --realise``, so the plan
builds only what no cache has — a derivation whose output a cache has is not built, and nor
is anything only it needed. If fetching fails (a cache gone, a path gone from it), what it
would have fetched is built instead, with a warning. With ``builders-use-substitutes`` the
builders are also asked to substitute each input they lack before anything is copied to them
(`engine.copies.bring`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.engine.nixcmd import run_nix
from nixdist.model.store_path import StorePath

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def parse_dry_run(said: str) -> list[str]:
    """The store paths listed under "… will be fetched …" in ``--dry-run`` output."""
    fetched: list[str] = []
    listing = False
    for line in said.splitlines():
        if not line.startswith(" "):
            listing = "will be fetched" in line
            continue
        path = line.strip()
        if listing and path.startswith("/"):
            StorePath.parse(path)  # a listed path is a store path, or this is not Nix's list
            fetched.append(path)
    return fetched


def to_fetch(drv_paths: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The paths Nix would fetch to realise `drv_paths` (none when it cannot say)."""
    if not drv_paths:
        return []
    done = run_nix(["nix-store", "--realise", "--dry-run", *drv_paths], environ)
    return parse_dry_run(done.said) if done.status == 0 else []


def fetch_here(paths: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Substitute `paths` into the local store; None when they are valid, else Nix's error."""
    if not paths:
        return None
    done = run_nix(["nix-store", "--realise", *paths], environ)
    return None if done.status == 0 else done.error("nix-store --realise")
