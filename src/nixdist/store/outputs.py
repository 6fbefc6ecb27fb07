"""Making a build's outputs valid in the local store while Nix holds their locks.

Nix locks every output (``<path>.lock``) for the whole hook build and, when the hook exits 0,
expects the outputs to be valid (nix-protocols.md §1.8). Adding a path the ordinary way takes
that same lock, so the hook cannot use it: Nix up to 2.28 let a child skip the lock
(``NIX_HELD_LOCKS``); 2.29 removed that, and only Nix's own in-process hook can skip it now.
What takes no path lock on any version, 2.8 to 2.34, is registering path info for files
already in place (``registerValidPaths``, the database transaction an import ends with):
``nix-store --load-db`` reads the records ``--dump-db`` writes (hash and size given) and
registers them as they are. (``--register-validity`` does the same but first canonicalises
the files at their *logical* path, which before Nix 2.34 is wrong for a chroot store; so we
write them canonical ourselves: modification time 1, read-only, files 0444 or 0555.)

So each output (a path whose lock the parent Nix holds, and so is ours to write) is:

1. *staged*: its NAR streams from the builder into ``<real store>/.nixdist-<hash part>``,
   checked against the builder's NAR hash and size as it comes (a bad or short stream removes
   the partial tree), then made canonical. The name is not a store path, so nothing can take
   it for one, and Nix's garbage collector deletes a leftover. Only the holder of the output
   lock writes it, so a leftover from a killed hook is simply replaced.
2. *committed*, all outputs together, by a *keeper*: a small shell child started before the
   first output is staged, in a session of its own so that Nix killing the hook's process group
   (Ctrl-C) cannot cut it short. Told to commit, it moves each staged tree to its store path
   (replacing a stale invalid one) and registers them all in one ``nix-store --load-db``
   (references first), or removes what it moved if that fails; when its input ends without
   that word (the hook failed or was killed), it removes the staging trees. Either every
   output becomes valid with the builder's path info (references, deriver, NAR hash and
   size), or nothing of them is left behind.

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

_READ_ONLY: Final = 0o444
_EXECUTABLE: Final = 0o555

#: How long registering, or removing what was staged, may take before the hook gives up on it
#: (Nix waits for a busy database without a limit; we do not).
KEEPER_TIMEOUT_S: Final = 300.0

# The keeper: $1 the nix-store program, $2 the store, then the staging tree of every output.
# It waits for one line on stdin. A count N, then N pairs of lines (staged tree, store path),
# then the registration records: it moves each tree in place and registers them all; if that
# fails it removes every path it placed. End of input instead (the hook failed, gave up or was
# killed): it removes the staging trees. POSIX sh, chmod, rm and mv only; `read` takes a pipe
# byte by byte, so nix-store gets the records that follow the pairs.
_KEEPER_SCRIPT: Final = """\
nix_store=$1 store=$2; shift 2
clean() {
  for tree; do
    if [ -e "$tree" ] || [ -h "$tree" ]; then chmod -R u+w "$tree" 2>/dev/null; rm -rf "$tree"; fi
  done
}
moved=
fail() {
  printf '%s' "$moved" | while IFS= read -r placed; do clean "$placed"; done
  clean "$@"
  exit 1
}
IFS= read -r count || { clean "$@"; exit 0; }
case $count in ''|*[!0-9]*) clean "$@"; exit 0 ;; esac
while [ "$count" -gt 0 ]; do
  IFS= read -r staged && IFS= read -r final || fail "$@"
  clean "$final"
  mv "$staged" "$final" || fail "$@"
  moved="$moved$final
"
  count=$((count - 1))
done
"$nix_store" --store "$store" --load-db || fail "$@"
"""


class OutputImport:
    """The local store as the destination of a build's copy-back (see the module docstring).

    Quacks like the destination of `nixdist.store.copy.copy_paths`; `commit` when the copy is
    done, `discard` in any case (after a commit it has nothing left to do).
    """

    def __init__(
        self,
        local: ServeStore,
        store: LocalStore,
        outputs: Iterable[StorePath],
        *,
        source: str,
        environ: Mapping[str, str],
        nix_store: str = "nix-store",
    ) -> None:
        """`source` names the store the outputs come from: a NAR that does not match its path
        info is that store's fault (the error's `peer`)."""
        self.local = local
        self._source = source
        self.name = local.name
        self._store = store
        self._outputs = frozenset(outputs)
        self._environ = environ
        self._nix_store = nix_store
        self._staged: dict[StorePath, PathInfo] = {}
        self._keeper: subprocess.Popen[bytes] | None = None

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]:
        return self.local.query_valid_paths(paths, lock=lock, substitute=substitute)

    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        """Stage an output; add any other path the ordinary way."""
        if info.path not in self._outputs:
            self.local.add_nar(info, nar)
            return
        if self._keeper is None:
            self._keeper = self._start_keeper()
        staging = self._staging(info.path)
        try:
            _remove(staging)  # a leftover of a hook killed before its keeper could clean up
            restore(_checked(info, nar), staging)
            _canonicalise(staging)
        except RemoteProtocolError as err:
            if err.peer is None:
                err.peer = self._source
            raise
        except OSError as err:
            raise LocalProtocolError(
                f"cannot write {info.path} into the local store: {err}"
            ) from err
        self._staged[info.path] = info

    def commit(self) -> None:
        """Move every staged output to its store path and register them, all or none."""
        if not self._staged:
            return
        infos = _references_first(list(self._staged.values()))
        pairs = "".join(
            f"{self._staging(info.path)}\n{self._store.real_path(info.path)}\n" for info in infos
        )
        message = [f"{len(infos)}\n{pairs}".encode(), encode_registration(infos)]
        self._staged.clear()
        try:
            said = self._finish(b"".join(message), f"registering {len(infos)} outputs")
        except LocalProtocolError:
            # The keeper was stopped mid-way: remove what it placed but could not register.
            valid = self.local.query_valid_paths(info.path for info in infos)
            for info in infos:
                if info.path not in valid:
                    _remove(Path(self._store.real_path(info.path)))
            raise
        if said is not None:
            raise LocalProtocolError(f"cannot register the outputs in the local store: {said}")

    def discard(self) -> None:
        """Remove whatever was staged (the keeper does it when its input ends uncommitted)."""
        self._staged.clear()
        self._finish(b"", "removing the staged outputs")

    def _staging(self, path: StorePath) -> Path:
        return Path(self._store.real_store_dir, f".nixdist-{path.hash_part}")

    def _start_keeper(self) -> subprocess.Popen[bytes]:
        """The child that commits or cleans up, in a session of its own: Nix kills the hook's
        process group when it stops the build (Ctrl-C), and the keeper must outlive that."""
        stagings = [str(self._staging(path)) for path in sorted(self._outputs)]
        argv = ["/bin/sh", "-c", _KEEPER_SCRIPT, "nixdist-keeper", self._nix_store, self._store.uri]
        env = dict(self._environ)
        env.pop("NIX_REMOTE", None)
        try:
            return subprocess.Popen(
                [*argv, *stagings],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as err:
            raise LocalProtocolError(f"cannot start /bin/sh to import the outputs: {err}") from err

    def _finish(self, message: bytes, doing: str) -> str | None:
        """Send the keeper its `message`, end its input and wait: None if it succeeded, else
        what it said."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return None
        try:
            _, said = keeper.communicate(message, timeout=KEEPER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(keeper.pid, signal.SIGKILL)
            keeper.communicate()  # reaps it and closes the pipes
            raise LocalProtocolError(
                f"{doing} with '{self._nix_store}' made no progress in {KEEPER_TIMEOUT_S:.0f} s"
                " (is Nix's database locked?)"
            ) from None
        if keeper.returncode == 0:
            return None
        return said.decode(errors="replace").strip() or f"exit status {keeper.returncode}"


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


def _canonicalise(root: Path) -> None:
    """Give a restored tree the metadata Nix gives every store path (``canonicalisePathMetaData``):
    modification time 1, no write permission, files 0444 or 0555. Symlinks are never followed
    (an output may be one, pointing anywhere)."""
    st = root.lstat()
    if stat.S_ISDIR(st.st_mode):
        for where, dirs, files in os.walk(root, topdown=False):
            for name in files + dirs:
                _canonical_entry(Path(where, name))
    _canonical_entry(root)


def _canonical_entry(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISREG(st.st_mode):
        path.chmod(_EXECUTABLE if st.st_mode & stat.S_IXUSR else _READ_ONLY)
    elif stat.S_ISDIR(st.st_mode):
        path.chmod(_EXECUTABLE)
    os.utime(path, (1, 1), follow_symlinks=False)


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
