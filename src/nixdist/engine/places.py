"""Where each store path of a run is valid — here, on which builders — and what it refers to.

A run learns path infos from the local store (the sources and the outputs valid here before it
starts) and from each builder after a build (its outputs). Copies are planned from this
alone: the closure a build needs is computed here, without asking any store, and each missing
path comes from the local store when it is valid here, else from a builder that has it
(relayed, never through the local store). Shared by the run's threads: every method holds
the lock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath

#: The name of the local store among the places of a path (no builder's URI looks like it;
#: "" means no place at all, e.g. a build that no machine could take).
HERE: Final = "<here>"


class Places:
    """Path infos, and the stores each path is valid in (`HERE` or a builder's URI)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._infos: dict[StorePath, PathInfo] = {}
        self._where: dict[StorePath, set[str]] = {}

    def add(self, infos: Iterable[PathInfo], place: str) -> None:
        """`infos` are valid at `place`."""
        with self._lock:
            for info in infos:
                self._infos.setdefault(info.path, info)
                self._where.setdefault(info.path, set()).add(place)

    def forget_place(self, place: str) -> None:
        """`place` is gone (a builder lost): nothing may be copied from it any more."""
        with self._lock:
            for places in self._where.values():
                places.discard(place)

    def where(self, path: StorePath) -> frozenset[str]:
        with self._lock:
            return frozenset(self._where.get(path, ()))

    def info(self, path: StorePath) -> PathInfo | None:
        with self._lock:
            return self._infos.get(path)

    def closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """The infos of `paths` and of everything they refer to, as far as known."""
        with self._lock:
            found: dict[StorePath, PathInfo] = {}
            todo = list(paths)
            while todo:
                path = todo.pop()
                if path in found or (info := self._infos.get(path)) is None:
                    continue
                found[path] = info
                todo.extend(r for r in info.references if r not in found)
            return found

    def source(self, path: StorePath, *, avoid: str) -> str | None:
        """Where to copy `path` from: here when it is valid here, else the first builder (by
        URI) that has it other than `avoid`; None when it is valid nowhere else."""
        with self._lock:
            places = self._where.get(path, set()) - {avoid}
        return HERE if HERE in places else min(places, default=None)
