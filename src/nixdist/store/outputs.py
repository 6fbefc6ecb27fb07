"""Making a build's outputs valid in the local store while Nix holds their locks.

Nix locks every output (``<path>.lock``) for the whole hook build and, when the hook exits 0,
expects the outputs to be valid (nix-protocols.md §1.8). Adding a path the ordinary way takes
that same lock, so the hook cannot use it: Nix up to 2.28 let a child skip the lock
(``NIX_HELD_LOCKS``); 2.29 removed that, and only Nix's own in-process hook can skip it now.
What takes no path lock on any version, 2.8 to 2.34, is registering a path that is already in
place: ``nix-store --register-validity --hash-given`` (``registerValidPaths``, the same
database transaction an import ends with; it also canonicalises the files).

So each output (a path whose lock the parent Nix holds, and so is ours to write) is:

1. *staged*: its NAR streams from the builder into ``<real store>/.nixdist-<hash part>``,
   checked against the builder's NAR hash and size as it comes (a bad or short stream removes
   the partial tree). The name is not a store path, so nothing can take it for one, and Nix's
   garbage collector deletes a leftover. Only the holder of the output lock writes it, so a
   leftover from a killed hook is simply replaced.
2. *committed*, all outputs together: one child, in a session of its own so that Nix killing
   the hook's process group cannot cut it in half, moves each staged tree to its store path
   (replacing a stale invalid one) and registers them all in one ``nix-store
   --register-validity --hash-given`` (references first); if that fails it removes what it
   moved. Either every output becomes valid with the builder's path info (references, deriver,
   NAR hash and size), or none is left behind.

The registration format has no content address and no signatures (`nixdist.wire.registration`):
outputs registered this way record neither. Paths of the closure that are not outputs of this
build (in practice none: an output refers only to inputs, valid already, and to outputs) are
not locked by anyone and are added the ordinary way, through the local ``nix-store --serve``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.errors import LocalProtocolError, RemoteProtocolError
from nixdist.store.narfs import restore
from nixdist.wire.registration import encode_registration

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from nixdist.model.local_store import LocalStore
    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath
    from nixdist.store.serve import ServeStore

#: How long registering may take before the hook gives up on it (Nix waits for a busy database
#: without a limit; we do not).
COMMIT_TIMEOUT_S: Final = 300.0

# $1: the nix-store program, $2: the store, then pairs (staged tree, store path). Moves each
# tree in place, then registers them all (the records arrive on stdin); on any failure removes
# every store path it may have placed. POSIX sh, chmod, rm and mv only.
_COMMIT_SCRIPT: Final = """\
nix_store=$1 store=$2; shift 2
undo() {
  staged=
  for arg; do
    if [ -z "$staged" ]; then staged=$arg; continue; fi
    if [ -n "$placed" ]; then chmod -R u+w "$arg" 2>/dev/null; rm -rf "$arg"; fi
    staged=
  done
}
placed=1
staged=
for arg; do
  if [ -z "$staged" ]; then staged=$arg; continue; fi
  if [ -e "$arg" ] || [ -h "$arg" ]; then chmod -R u+w "$arg" 2>/dev/null; rm -rf "$arg"; fi
  mv "$staged" "$arg" || { undo "$@"; exit 1; }
  staged=
done
"$nix_store" --store "$store" --register-validity --hash-given || { undo "$@"; exit 1; }
"""


class OutputImport:
    """The local store as the destination of a build's copy-back (see the module docstring).

    Quacks like the destination of `nixdist.store.copy.copy_paths`; `commit` when the copy is
    done, `discard` on failure.
    """

    def __init__(
        self,
        local: ServeStore,
        store: LocalStore,
        outputs: Iterable[StorePath],
        *,
        environ: Mapping[str, str],
        nix_store: str = "nix-store",
    ) -> None:
        self.local = local
        self.name = local.name
        self._store = store
        self._outputs = frozenset(outputs)
        self._environ = environ
        self._nix_store = nix_store
        self._staged: dict[StorePath, tuple[PathInfo, Path]] = {}

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]:
        return self.local.query_valid_paths(paths, lock=lock, substitute=substitute)

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        """Stage an output; add any other path the ordinary way."""
        if info.path not in self._outputs:
            self.local.add_nar(info, nar)
            return
        staging = Path(self._store.real_store_dir, f".nixdist-{info.path.hash_part}")
        try:
            _remove(staging)
            restore(_checked(info, nar), staging)
        except OSError as err:
            raise LocalProtocolError(
                f"cannot write {info.path} into the local store: {err}"
            ) from err
        self._staged[info.path] = (info, staging)

    def commit(self) -> None:
        """Move every staged output to its store path and register them, all or none."""
        if not self._staged:
            return
        infos = [info for info, _ in self._staged.values()]
        argv = ["/bin/sh", "-c", _COMMIT_SCRIPT, "nixdist-commit", self._nix_store, self._store.uri]
        for info, staging in self._staged.values():
            argv += [str(staging), self._store.real_path(info.path)]
        env = dict(self._environ)
        env.pop("NIX_REMOTE", None)
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # Nix kills the hook's process group, not this
            )
        except OSError as err:
            raise LocalProtocolError(f"cannot register the outputs: {err}") from err
        try:
            _, said = child.communicate(
                encode_registration(_references_first(infos)), timeout=COMMIT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            for info in infos:
                _remove(Path(self._store.real_path(info.path)))
            raise LocalProtocolError(
                f"registering {len(infos)} outputs with '{self._nix_store} --register-validity'"
                f" made no progress in {COMMIT_TIMEOUT_S:.0f} s (is Nix's database locked?)"
            ) from None
        self._staged.clear()
        if child.returncode != 0:
            text = said.decode(errors="replace").strip() or f"exit status {child.returncode}"
            raise LocalProtocolError(f"cannot register the outputs in the local store: {text}")

    def discard(self) -> None:
        """Remove whatever was staged (after a failure)."""
        for _, staging in self._staged.values():
            _remove(staging)
        self._staged.clear()


def _references_first(infos: list[PathInfo]) -> list[PathInfo]:
    """`infos` ordered so that each comes after those of its references among them."""
    by_path = {info.path: info for info in infos}
    done: dict[StorePath, PathInfo] = {}

    def visit(info: PathInfo, seen: frozenset[StorePath]) -> None:
        if info.path in done or info.path in seen:
            return
        for ref in info.sorted_references():
            if ref in by_path and ref != info.path:
                visit(by_path[ref], seen | {info.path})
        done[info.path] = info

    for info in infos:
        visit(info, frozenset())
    return list(done.values())


def _checked(info: PathInfo, nar: Iterable[bytes]) -> Iterator[bytes]:
    """`nar`, passed on while its SHA-256 and size are checked against `info`."""
    digest = hashlib.sha256()
    size = 0
    for chunk in nar:
        size += len(chunk)
        if size > info.nar_size:
            break
        digest.update(chunk)
        yield chunk
    if size != info.nar_size:
        raise RemoteProtocolError(
            f"NAR of {info.path} is {size} bytes, its path info says {info.nar_size}"
        )
    if digest.digest() != info.nar_hash.digest:
        raise RemoteProtocolError(
            f"NAR of {info.path} does not match its hash: expected {info.nar_hash}, "
            f"got sha256:{digest.hexdigest()}"
        )


def _remove(path: Path) -> None:
    """Delete a tree that Nix's canonicalisation may have made read-only; gone already is fine."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    for root, _dirs, _files in os.walk(path):  # never follows symlinks: real directories only
        Path(root).chmod(stat.S_IRWXU)
    shutil.rmtree(path)
