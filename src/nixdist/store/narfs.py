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
import stat
from typing import TYPE_CHECKING, Final

from nixdist.errors import WireError
from nixdist.wire.nar import (
    DIRECTORY_START,
    ENTRY_END,
    MAX_DEPTH,
    NAR_START,
    NODE_END,
    Contents,
    Directory,
    DirectoryEnd,
    NarEvent,
    NarPath,
    Regular,
    Symlink,
    encode_entry_start,
    encode_regular_end,
    encode_regular_start,
    encode_symlink,
)
from nixdist.wire.nar_reader import NarReader

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

DEFAULT_CHUNK_SIZE: Final = 256 << 10  # measured: 128 KiB-1 MiB are alike, larger is slower
_COALESCE: Final = 64 * 1024

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


def _read_exact(fd: int, size: int, fs_path: bytes) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            raise _shrunk(fs_path, got, size)
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _shrunk(fs_path: bytes, got: int, size: int) -> WireError:
    return WireError(
        f"file {os.fsdecode(fs_path)!r} ended after {got} of its {size} bytes "
        "(was it changed while being dumped?)"
    )


def _open_regular(fs_path: bytes) -> tuple[int, os.stat_result]:
    # O_NONBLOCK: if the file was replaced by a fifo since it was listed, do not hang on it
    fd = os.open(fs_path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _unsupported(fs_path, st.st_mode)
    return fd, st


def _stream_contents(fd: int, size: int, fs_path: bytes, chunk_size: int) -> Iterator[bytes]:
    got = 0
    while got < size:
        data = os.read(fd, min(chunk_size, size - got))
        if not data:
            raise _shrunk(fs_path, got, size)
        got += len(data)
        yield data


def _dump_file(fs_path: bytes, chunk_size: int) -> Iterator[bytes]:
    """A NAR whose root is the regular file at `fs_path`."""
    fd, st = _open_regular(fs_path)
    try:
        size = st.st_size
        yield NAR_START + encode_regular_start(bool(st.st_mode & stat.S_IXUSR), size)
        yield from _stream_contents(fd, size, fs_path, chunk_size)
        yield encode_regular_end(size)
    finally:
        os.close(fd)


def _dump_directory(root: bytes, chunk_size: int) -> Iterator[bytes]:
    """A NAR whose root is the directory `root`.

    This is the hot path of ``nixdist nar dump``, so it puts the NAR together from the
    building blocks of `nixdist.wire.nar` directly instead of going through `NarWriter`'s
    per-event checks: the filesystem already guarantees what those check (names are unique,
    at most NAME_MAX bytes, never empty, ``.``, ``..``, and free of ``/`` and NUL), and the
    entries are sorted here. Only the nesting limit is checked. Small pieces are joined into
    chunks of at least 64 KiB; large files' contents are passed on as they are read.
    """
    pending: list[bytes] = [NAR_START + DIRECTORY_START]
    pending_len = 0
    # one frame per open directory: its path and the entries still to dump
    stack: list[tuple[bytes, Iterator[tuple[bytes, int]]]] = [(root, iter(_list_dir(root)))]
    while stack:
        dir_fs, entries = stack[-1]
        too_deep = len(stack) > MAX_DEPTH  # the depth of this directory's entries
        for name, kind in entries:
            if too_deep:
                raise WireError(f"{os.fsdecode(dir_fs)!r} is nested deeper than {MAX_DEPTH}")
            child_fs = dir_fs + b"/" + name
            start = encode_entry_start(name)
            if kind == _KIND_FILE:
                fd, st = _open_regular(child_fs)
                try:
                    size = st.st_size
                    head = start + encode_regular_start(bool(st.st_mode & stat.S_IXUSR), size)
                    tail = encode_regular_end(size) + ENTRY_END
                    if size <= chunk_size:
                        piece = b"".join((head, _read_exact(fd, size, child_fs), tail))
                        pending.append(piece)
                        pending_len += len(piece)
                    else:
                        pending.append(head)
                        yield b"".join(pending)
                        pending.clear()
                        yield from _stream_contents(fd, size, child_fs, chunk_size)
                        pending.append(tail)
                        pending_len = len(tail)
                finally:
                    os.close(fd)
            elif kind == _KIND_SYMLINK:
                target = os.readlink(child_fs)  # noqa: PTH115 - bytes in, bytes out
                pending.append(start + encode_symlink(target) + ENTRY_END)
            else:
                pending.append(start + DIRECTORY_START)
                stack.append((child_fs, iter(_list_dir(child_fs))))
                break  # go down; this directory's iterator resumes after the child
            if pending_len >= _COALESCE:
                yield b"".join(pending)
                pending.clear()
                pending_len = 0
        else:
            stack.pop()
            pending.append(NODE_END + ENTRY_END if stack else NODE_END)
    yield b"".join(pending)


def dump_path(
    path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """The NAR serialisation of `path`, as ``nix-store --dump`` writes it, in chunks.

    A symlink at `path` is stored as a symlink. Raises `OSError` for filesystem errors and
    `WireError` for files a NAR cannot hold (sockets, devices, fifos).
    """
    root = os.fsencode(path)
    mode = os.lstat(root).st_mode
    if stat.S_ISDIR(mode):
        return _dump_directory(root, chunk_size)
    if stat.S_ISREG(mode):
        return _dump_file(root, chunk_size)
    if stat.S_ISLNK(mode):
        return iter([NAR_START + encode_symlink(os.readlink(root))])  # noqa: PTH115 - bytes
    raise _unsupported(root, mode)


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
            import shutil  # noqa: PLC0415 - only needed after a failure; keeps startup short

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
