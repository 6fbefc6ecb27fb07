"""Copies of one run: each path from where it is, straight to where it is needed.

`bring` makes a closure valid in one store (a builder's before a build; the local store for
the outputs asked for). The closure is put in dependency order and cut into runs of paths that
come from one place — the local store when a path is valid here, else a builder that has it —
and each run is one streamed `copy_paths` from that place's session: a path made on one
builder and needed on another goes builder to builder, never through the local store.
Every path copied becomes a place of that path (`Places.add`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixdist.errors import NixdistError
from nixdist.store.closure import dependency_order
from nixdist.store.copy import copy_paths

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nixdist.engine.places import Places
    from nixdist.engine.sessions import SessionPool
    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath
    from nixdist.store.claims import UploadClaims
    from nixdist.store.copy import Destination


@dataclass(frozen=True, slots=True, kw_only=True)
class Brought:
    """What `bring` moved, by the place it came from: paths and NAR bytes."""

    paths: int
    nar_bytes: int
    by_source: Mapping[str, int]  # NAR bytes per source place


class SourceLostError(NixdistError):
    """A store a path was being copied from failed (not the destination)."""

    def __init__(self, place: str, reason: str) -> None:
        super().__init__(reason)
        self.place = place


def runs_by_source(
    infos: Mapping[StorePath, PathInfo], source_of: Callable[[StorePath], str | None]
) -> list[tuple[str, list[StorePath]]]:
    """`infos` in dependency order, cut into runs of consecutive paths of one source; a path
    with no source raises `NixdistError`."""
    runs: list[tuple[str, list[StorePath]]] = []
    for info in dependency_order(infos):
        source = source_of(info.path)
        if source is None:
            raise NixdistError(f"{info.path} is valid nowhere nixdist can copy it from")
        if runs and runs[-1][0] == source:
            runs[-1][1].append(info.path)
        else:
            runs.append((source, [info.path]))
    return runs


def bring(
    closure: Mapping[StorePath, PathInfo],
    *,
    to: str,
    destination: Destination,
    places: Places,
    sessions: SessionPool,
    claims: UploadClaims | None = None,
    substitute: bool = False,
) -> Brought:
    """Make `closure` valid at the place `to` (whose session is `destination`).

    With `substitute` (``builders-use-substitutes``) the destination first tries its own
    substituters. A failure of a source's session raises `SourceLostError` (that place is then
    no source); a failure of the destination's propagates with its `peer`, as from
    `copy_paths`.
    """
    valid = destination.query_valid_paths(closure.keys(), substitute=substitute)
    missing = {path: info for path, info in closure.items() if path not in valid}
    by_source: dict[str, int] = {}
    paths = 0
    for source, run in runs_by_source(missing, lambda p: places.source(p, avoid=to)):
        session = sessions.take(source)
        try:
            report = copy_paths(session, destination, run, claims=claims)
        except NixdistError as err:
            sessions.discard(session)
            if err.peer == session.name:
                raise SourceLostError(source, str(err)) from err
            raise
        except BaseException:
            sessions.discard(session)
            raise
        sessions.give_back(source, session)
        paths += len(report.copied)
        by_source[source] = by_source.get(source, 0) + report.nar_bytes
    places.add(closure.values(), to)
    return Brought(paths=paths, nar_bytes=sum(by_source.values()), by_source=by_source)
