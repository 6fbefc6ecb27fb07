"""Copying store paths between two `ServeStore`s, streamed: no temporary files, no NAR in memory.

Only the paths missing at the destination move, references first, each NAR flowing from the
source's ``DumpStorePath`` reply straight into the destination's ``AddToStoreNar`` request.
The destination checks each NAR against the hash and size in its path info (Nix refuses a
mismatch), so a corrupted transfer never becomes a valid path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixdist.errors import TransportError
from nixdist.store.closure import dependency_order

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath
    from nixdist.store.serve import ServeStore


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyReport:
    """What a copy did: the paths sent (in order) and how many NAR bytes."""

    copied: tuple[StorePath, ...]
    nar_bytes: int
    already_valid: int


def copy_paths(
    src: ServeStore,
    dst: ServeStore,
    paths: Iterable[StorePath],
    *,
    substitute: bool = False,
    on_path: Callable[[PathInfo], None] | None = None,
) -> CopyReport:
    """Make every path of `paths` valid in `dst`, copying the missing ones from `src`.

    `paths` must be closed under references, or the missing references must already be
    valid in `dst`. With `substitute`, `dst` first tries its own substituters
    (``builders-use-substitutes``).
    """
    wanted = frozenset(paths)
    valid = dst.query_valid_paths(wanted, lock=True, substitute=substitute)
    missing = wanted - valid
    infos = src.query_path_infos(missing)
    lost = missing - infos.keys()
    if lost:
        raise TransportError(f"'{src.name}' does not have {', '.join(sorted(map(str, lost)))}")
    order = dependency_order(infos)
    nar_bytes = 0
    for info in order:
        if on_path is not None:
            on_path(info)
        dst.add_nar(info, src.dump(info.path))
        nar_bytes += info.nar_size
    return CopyReport(
        copied=tuple(info.path for info in order),
        nar_bytes=nar_bytes,
        already_valid=len(wanted) - len(missing),
    )


def copy_closure(
    src: ServeStore,
    dst: ServeStore,
    paths: Iterable[StorePath],
    *,
    on_path: Callable[[PathInfo], None] | None = None,
) -> CopyReport:
    """Copy `paths` and everything they refer to (their closure in `src`) to `dst`."""
    return copy_paths(src, dst, src.query_closure(paths), on_path=on_path)
