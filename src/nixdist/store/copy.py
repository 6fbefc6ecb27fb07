"""Copying store paths between two stores, streamed: no temporary files, no NAR in memory.

Only the paths missing at the destination move, references first, each NAR flowing from the
source's ``DumpStorePath`` reply straight into the destination's ``AddToStoreNar`` request.
The destination checks each NAR against the hash and size in its path info (Nix refuses a
mismatch), so a corrupted transfer never becomes a valid path.

With `UploadClaims`, several processes copying to one destination share the work path by
path: each sends the paths nobody else is sending (references first, as always), and waits
for another's only when nothing else is left, then asks the destination again.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nixdist.errors import TransportError
from nixdist.store.closure import dependency_order

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath
    from nixdist.store.claims import UploadClaims


class Source(Protocol):
    """Where a copy comes from: a `ServeStore` (the local store, an ``ssh://`` builder) or a
    `nixdist.store.daemon.DaemonStore` (an ``ssh-ng://`` builder)."""

    name: str

    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]: ...

    def query_closure(self, paths: Iterable[StorePath]) -> frozenset[StorePath]: ...

    def dump(self, path: StorePath) -> Iterator[bytes]: ...


class Destination(Protocol):
    """Where a copy goes: a builder's store (either protocol), or the local store taking a
    build's outputs (`nixdist.store.outputs.OutputImport`)."""

    name: str

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]: ...

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None: ...


class CopyProgress(Protocol):
    """Told how a copy goes, for a progress display (all calls come from the copying thread)."""

    def planned(self, infos: Sequence[PathInfo]) -> None:
        """The paths about to be sent (some may then come from another process instead)."""

    def path_started(self, info: PathInfo) -> None: ...

    def path_progress(self, info: PathInfo, done: int) -> None:
        """`done` of ``info.nar_size`` NAR bytes sent so far."""

    def path_done(self, info: PathInfo) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyReport:
    """What a copy did: the paths sent (in order) and how many NAR bytes."""

    copied: tuple[StorePath, ...]
    nar_bytes: int
    already_valid: int


def copy_paths(
    src: Source,
    dst: Destination,
    paths: Iterable[StorePath],
    *,
    substitute: bool = False,
    progress: CopyProgress | None = None,
    claims: UploadClaims | None = None,
) -> CopyReport:
    """Make every path of `paths` valid in `dst`, copying the missing ones from `src`.

    `paths` must be closed under references, or the missing references must already be
    valid in `dst`. With `substitute`, `dst` first tries its own substituters
    (``builders-use-substitutes``). With `claims`, paths another process is sending to `dst`
    are not sent again (see the module docstring).
    """
    wanted = frozenset(paths)
    asked = time.time()
    valid = dst.query_valid_paths(wanted, lock=True, substitute=substitute)
    missing = wanted - valid
    # As Nix's copyStorePath: the destination did not build what it receives ("ultimate" is
    # the source's own fact; a daemon reports it, the serve protocol does not).
    infos = {
        path: dataclasses.replace(info, ultimate=False)
        for path, info in src.query_path_infos(missing).items()
    }
    lost = missing - infos.keys()
    if lost:
        raise TransportError(f"'{src.name}' does not have {', '.join(sorted(map(str, lost)))}")
    order = dependency_order(infos)
    sent: list[PathInfo] = []

    def send(info: PathInfo) -> None:
        if progress is None:
            dst.add_nar(info, src.dump(info.path))
        else:
            progress.path_started(info)
            dst.add_nar(info, _counted(src.dump(info.path), info, progress))
            progress.path_done(info)
        sent.append(info)

    if progress is not None:
        progress.planned(order)

    if claims is None:
        for info in order:
            send(info)
    else:
        _send_claimed(order, dst, claims, send, asked=asked)
    return CopyReport(
        copied=tuple(info.path for info in sent),
        nar_bytes=sum(info.nar_size for info in sent),
        already_valid=len(wanted) - len(sent),
    )


def copy_closure(
    src: Source,
    dst: Destination,
    paths: Iterable[StorePath],
    *,
    progress: CopyProgress | None = None,
) -> CopyReport:
    """Copy `paths` and everything they refer to (their closure in `src`) to `dst`."""
    return copy_paths(src, dst, src.query_closure(paths), progress=progress)


def _counted(chunks: Iterable[bytes], info: PathInfo, progress: CopyProgress) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress.path_progress(info, done)


def _send_claimed(
    pending: list[PathInfo],
    dst: Destination,
    claims: UploadClaims,
    send: Callable[[PathInfo], None],
    *,
    asked: float,
) -> None:
    """`send` each of `pending` (in dependency order) unless another process sends it first.

    `asked` is when `dst` last said these paths were missing.
    """
    while pending:
        left = {info.path for info in pending}
        for info in list(pending):
            if any(ref in left for ref in info.references if ref != info.path):
                continue  # a reference is still on its way
            claim = claims.try_claim(info.path)
            if claim is None:
                continue  # another process is sending it
            try:
                if not claim.uploaded_since(asked):
                    send(info)
                    claim.mark_uploaded()
            finally:
                claim.release()
            pending.remove(info)
            left.discard(info.path)
        if pending:
            # Everything left is being sent by others, or refers to what is: wait for the
            # first (its references are all there), then ask which have arrived.
            claims.wait(pending[0].path)
            asked = time.time()
            arrived = dst.query_valid_paths(left, lock=True)
            pending = [info for info in pending if info.path not in arrived]
