"""The filesystem side of NAR: dump a file tree to NAR bytes, restore NAR bytes to a tree.

`dump_path` produces exactly what ``nix-store --dump PATH`` writes: the tree is walked with
``lstat`` semantics (symlinks are stored, never followed), the entries of a directory are
sorted byte-wise by name, a regular file is executable iff its owner-execute bit is set, and
sockets, devices and fifos are an error. Files are read in chunks, so memory does not grow
with file size.

`restore` does what ``nix-store --restore TARGET`` does: TARGET must not exist; directories
are created with mode 0777 and files with 0666 (both minus the umask), and an executable file
then gets ``+x`` for everyone (its mode OR 0111), symlinks are created as they are. The tree is
built through directory file descriptors and ``O_NOFOLLOW``/``O_EXCL``, so nothing is ever
written outside TARGET, even through symlinks the NAR itself created. If the NAR is malformed
(or has trailing bytes, or reading it fails) the partly restored TARGET is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import TYPE_CHECKING, Final

from nixdist.errors import WireError
from nixdist.wire.nar import (
    Contents,
    Directory,
    DirectoryEnd,
    NarEvent,
    NarPath,
    NarReader,
    Regular,
    Symlink,
    encode_nar,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

DEFAULT_CHUNK_SIZE: Final = 1 << 20

_KIND_DIR: Final = 0
_KIND_FILE: Final = 1
_KIND_SYMLINK: Final = 2

# Directory fds kept open while restoring; deeper ancestors are reopened through "..".
_MAX_OPEN_DIRS: Final = 64

_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)


def _unsupported(fs_path: bytes, mode: int) -> WireError:
    kinds = {
        stat.S_IFSOCK: "socket",
        stat.S_IFIFO: "fifo",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
    }
    kind = kinds.get(stat.S_IFMT(mode), f"mode {mode:o}")
    return WireError(f"file {os.fsdecode(fs_path)!r} has an unsupported type ({kind})")


def _kind_of(fs_path: bytes, entry: os.DirEntry[bytes]) -> int:
    """The kind of a directory entry, from its d_type when the filesystem gives one."""
    if entry.is_symlink():
        return _KIND_SYMLINK
    if entry.is_dir(follow_symlinks=False):
        return _KIND_DIR
    if entry.is_file(follow_symlinks=False):
        return _KIND_FILE
    raise _unsupported(fs_path, entry.stat(follow_symlinks=False).st_mode)


def _list_dir(fs_path: bytes) -> list[tuple[bytes, int]]:
    """A directory's entries as (name, kind), sorted byte-wise by name."""
    with os.scandir(fs_path) as entries:
        listed = [(entry.name, _kind_of(entry.path, entry)) for entry in entries]
    listed.sort()
    return listed


def _file_events(path: NarPath, fs_path: bytes, chunk_size: int) -> Iterator[NarEvent]:
    # O_NONBLOCK: if the file was replaced by a fifo since it was listed, do not hang on it
    fd = os.open(fs_path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsupported(fs_path, st.st_mode)
        size = st.st_size
        yield Regular(path=path, executable=bool(st.st_mode & stat.S_IXUSR), size=size)
        remaining = size
        while remaining:
            data = os.read(fd, min(chunk_size, remaining))
            if not data:
                raise WireError(
                    f"file {os.fsdecode(fs_path)!r} ended after {size - remaining} of its "
                    f"{size} bytes (was it changed while being dumped?)"
                )
            remaining -= len(data)
            yield Contents(data=data)
    finally:
        os.close(fd)


def walk_path(
    path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[NarEvent]:
    """The NAR events describing the tree at `path` (not following a symlink at `path`)."""
    root = os.fsencode(path)
    mode = os.lstat(root).st_mode
    if stat.S_ISLNK(mode):
        yield Symlink(path=(), target=os.readlink(root))  # noqa: PTH115 - bytes in, bytes out
        return
    if stat.S_ISREG(mode):
        yield from _file_events((), root, chunk_size)
        return
    if not stat.S_ISDIR(mode):
        raise _unsupported(root, mode)
    yield Directory(path=())
    # one frame per open directory: its NAR path, filesystem path, and the entries still due
    stack: list[tuple[NarPath, bytes, Iterator[tuple[bytes, int]]]] = [
        ((), root, iter(_list_dir(root)))
    ]
    while stack:
        dir_path, dir_fs, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            yield DirectoryEnd(path=dir_path)
            continue
        name, kind = entry
        child = (*dir_path, name)
        child_fs = dir_fs + b"/" + name
        if kind == _KIND_FILE:
            yield from _file_events(child, child_fs, chunk_size)
        elif kind == _KIND_SYMLINK:
            yield Symlink(path=child, target=os.readlink(child_fs))  # noqa: PTH115 - bytes in, bytes out
        else:
            yield Directory(path=child)
            stack.append((child, child_fs, iter(_list_dir(child_fs))))


def dump_path(
    path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """The NAR serialisation of `path`, as ``nix-store --dump`` writes it, in chunks.

    Raises `OSError` for filesystem errors and `WireError` for files a NAR cannot hold.
    """
    return encode_nar(walk_path(path, chunk_size=chunk_size))


# --------------------------------------------------------------------------------------------
# Restore


class _Restorer:
    """Applies NAR events to the filesystem below (parent_fd, root_name)."""

    def __init__(self, parent_fd: int, root_name: bytes) -> None:
        self._parent_fd = parent_fd
        self._root_name = root_name
        self._dirs: list[int | None] = []  # fds of the open directories, None if closed
        self._file: int | None = None
        self._file_remaining = 0
        self.created = False

    def _where(self, path: NarPath) -> tuple[int, bytes]:
        """The directory fd and name under which the node at `path` is created."""
        if not path:
            return self._parent_fd, self._root_name
        fd = self._dirs[-1]
        if fd is None:  # pragma: no cover - the innermost directory is always open
            raise AssertionError("innermost directory is not open")
        return fd, path[-1]

    def apply(self, event: NarEvent) -> None:
        match event:
            case Contents(data=data):
                self._write(data)
            case Regular():
                self._regular(event)
            case Symlink(path=path, target=target):
                dir_fd, name = self._where(path)
                os.symlink(target, name, dir_fd=dir_fd)
                self.created = True
            case Directory(path=path):
                self._directory(path)
            case DirectoryEnd():
                self._directory_end()

    def _regular(self, event: Regular) -> None:
        dir_fd, name = self._where(event.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
        fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
        self.created = True
        self._file = fd
        self._file_remaining = event.size
        if event.executable:
            os.fchmod(fd, os.fstat(fd).st_mode | 0o111)
        if event.size == 0:
            self._close_file()

    def _directory(self, path: NarPath) -> None:
        dir_fd, name = self._where(path)
        os.mkdir(name, 0o777, dir_fd=dir_fd)
        self.created = True
        flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
        self._dirs.append(os.open(name, flags, dir_fd=dir_fd))
        if len(self._dirs) > _MAX_OPEN_DIRS:
            self._close_dir_at(len(self._dirs) - 1 - _MAX_OPEN_DIRS)

    def _directory_end(self) -> None:
        fd = self._dirs.pop()
        if fd is None:  # pragma: no cover - the innermost directory is always open
            raise AssertionError("innermost directory is not open")
        if self._dirs and self._dirs[-1] is None:
            flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
            self._dirs[-1] = os.open(b"..", flags, dir_fd=fd)
        os.close(fd)

    def _write(self, data: bytes) -> None:
        if self._file is None:  # pragma: no cover - NarReader emits Contents only in a file
            raise AssertionError("contents outside a file")
        view = memoryview(data)
        while view:
            written = os.write(self._file, view)
            view = view[written:]
        self._file_remaining -= len(data)
        if self._file_remaining == 0:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            fd, self._file = self._file, None
            os.close(fd)

    def _close_dir_at(self, index: int) -> None:
        fd = self._dirs[index]
        if fd is not None:
            self._dirs[index] = None
            os.close(fd)

    def close(self) -> None:
        self._close_file()
        for index in range(len(self._dirs)):
            self._close_dir_at(index)
        self._dirs.clear()

    def remove_partial(self) -> None:
        """Close everything and delete what was created (only if we created the root)."""
        self.close()
        if not self.created:
            return
        if stat.S_ISDIR(os.lstat(self._root_name, dir_fd=self._parent_fd).st_mode):
            shutil.rmtree(self._root_name, dir_fd=self._parent_fd)
        else:
            os.unlink(self._root_name, dir_fd=self._parent_fd)


def restore(chunks: Iterable[bytes], target: str | os.PathLike[str]) -> None:
    """Create the tree described by the NAR `chunks` at `target`, which must not exist.

    Raises `WireError` for a malformed NAR (or bytes after its end) and `OSError` for
    filesystem errors; in both cases nothing is left at `target`.
    """
    target_bytes = os.fsencode(target).rstrip(b"/")
    parent, name = os.path.split(target_bytes)
    if name in {b"", b".", b".."}:
        raise WireError(f"cannot restore to {os.fsdecode(target)!r}: not a new path")
    parent_fd = os.open(parent or b".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        try:
            os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        else:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(target))
        restorer = _Restorer(parent_fd, name)
        try:
            _restore_into(restorer, chunks)
        except BaseException:
            restorer.remove_partial()
            raise
        restorer.close()
    finally:
        os.close(parent_fd)


def _restore_into(restorer: _Restorer, chunks: Iterable[bytes]) -> None:
    reader = NarReader()
    for chunk in chunks:
        for event in reader.feed(chunk):
            restorer.apply(event)
        if reader.unused_data:
            raise WireError(f"unexpected bytes after the end of the NAR at offset {reader.offset}")
    reader.finish()
