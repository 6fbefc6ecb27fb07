"""`nixdist nar` against the installed Nix: byte-identical dumps, equal hashes, compatible restores.

Every tree is built in a temporary directory and checked three ways:
`nixdist nar dump` == `nix-store --dump`, `nixdist nar hash` == `nix-hash --type sha256 --base32`,
and `nixdist nar restore` of Nix's dump gives the same files (types, modes, contents) as
`nix-store --restore`, and dumps back to the same bytes. The export codec is checked against
`nix-store --export` / `--import`, and the dump of a 1 GiB file must stay under 64 MiB RSS.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.model import nixbase32
from nixdist.store.narfs import dump_path
from nixdist.wire.export import ExportInfo, decode_export, encode_export
from nixdist.wire.nar import MAX_DEPTH, MAX_NAME_LEN

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration

NIXDIST = str(Path(sys.executable).with_name("nixdist"))
NO_SUBST = ["--option", "substituters", ""]


def run(args: list[str], *, stdin: bytes | None = None) -> bytes:
    return subprocess.run(args, input=stdin, capture_output=True, check=True).stdout


def fs(path: Path, name: bytes) -> Path:
    """`path / name` for a name that is any bytes."""
    return path / os.fsdecode(name)


def write(path: Path, data: bytes = b"", mode: int | None = None) -> None:
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


# --------------------------------------------------------------------------------------------
# Tricky trees. Each builder creates the tree at `root` (which does not exist yet).


def single_file(root: Path) -> None:
    write(root, b"hello\n")


def single_empty_file(root: Path) -> None:
    write(root)


def single_executable(root: Path) -> None:
    write(root, b"#!/bin/sh\necho hi\n", 0o755)


def single_absolute_symlink(root: Path) -> None:
    root.symlink_to("/nix/store")


def single_dangling_symlink(root: Path) -> None:
    root.symlink_to("does/not/exist")


def empty_dir(root: Path) -> None:
    root.mkdir()


def mixed(root: Path) -> None:
    root.mkdir()
    write(root / "file", b"data")
    write(root / "exe", b"#!/bin/sh\n", 0o755)
    write(root / "empty")
    write(root / "empty-exe", b"", 0o700)
    (root / "emptydir").mkdir()
    (root / "link-rel").symlink_to("file")
    (root / "link-abs").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("../../nowhere")
    (root / "dirlink").symlink_to("emptydir")
    (root / "sub" / "deeper").mkdir(parents=True)
    write(root / "sub" / "deeper" / "x", b"x" * 9)


def byte_order(root: Path) -> None:
    """Names whose byte order differs from any locale's collation."""
    root.mkdir()
    for name in ["a", "B", "b", "_", "Z", "é", "e", "E", "10", "9", ".hidden", "-x", "~t", "a.b"]:
        write(root / name, name.encode())
    for name in ["a-b", "ab", "A", "aB", "Ab", "zz", "É", "ß", "ss"]:
        (root / name).mkdir()


def non_ascii_names(root: Path) -> None:
    root.mkdir()
    for name in ["ü", "日本語", "emoji-😀", "Ω≈ç", "ﬁ", "e\u0301"]:
        write(root / name, name.encode() * 3)


def odd_byte_names(root: Path) -> None:
    root.mkdir()
    for name in [
        b"\xff\xfe",
        b"\x01",
        b"new\nline",
        b"tab\t",
        b"sp ace",
        b"back\\slash",
        b"q'\"",
        b"\x7f",
    ]:
        write(fs(root, name), name)
    write(fs(root, b"n" * MAX_NAME_LEN), b"longest name")


def deep_nesting(root: Path) -> None:
    path = root
    for i in range(150):
        path /= chr(ord("a") + i % 26)
    path.mkdir(parents=True)
    write(path / "bottom", b"deep")
    (path / "up").symlink_to("../" * 150)


def wide_dir(root: Path) -> None:
    root.mkdir()
    for i in range(600):
        write(root / f"f{i}", str(i).encode() * (i % 17))


def padding_sizes(root: Path) -> None:
    root.mkdir()
    for size in range(18):
        write(root / f"size-{size:02}", bytes(range(1, size + 1)))


def large_file(root: Path) -> None:
    root.mkdir()
    write(root / "big", os.urandom((5 << 20) + 3))
    write(root / "small", b"after the big one")


def large_single_file(root: Path) -> None:
    write(root, os.urandom((3 << 20) + 5), 0o555)


def sparse_file(root: Path) -> None:
    root.mkdir()
    with (root / "sparse").open("wb") as out:
        out.truncate(20 << 20)
        out.seek(7 << 20)
        out.write(b"in the middle")


def modes(root: Path) -> None:
    root.mkdir()
    write(root / "owner-x", b"1", 0o100)
    write(root / "group-other-x", b"2", 0o611)  # not executable: only the owner bit counts
    write(root / "setuid", b"3", 0o4755)
    write(root / "readonly", b"4", 0o444)
    write(root / "private", b"5", 0o600)
    (root / "ro-dir").mkdir()
    write(root / "ro-dir" / "inside", b"6")
    (root / "ro-dir").chmod(0o555)


def symlink_targets(root: Path) -> None:
    root.mkdir()
    (root / "dot").symlink_to(".")
    (root / "dotdot").symlink_to("..")
    (root / "long").symlink_to("x/" * 1500 + "end")
    (root / "odd").symlink_to(os.fsdecode(b"\xff target with spaces"))
    (root / "self").symlink_to("self")


def hardlinks(root: Path) -> None:
    root.mkdir()
    write(root / "one", b"shared inode")
    os.link(root / "one", root / "two")


def only_dirs(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "d").mkdir()
    (root / "e").mkdir()


def symlink_to_dir(root: Path) -> None:
    """A top-level symlink to a directory is stored as a symlink, not followed."""
    target = root.with_name(root.name + "-target")
    target.mkdir()
    write(target / "inside", b"not dumped")
    root.symlink_to(target)


def many_small_files(root: Path) -> None:
    for d in range(20):
        sub = root / f"dir{d}"
        sub.mkdir(parents=True)
        for f in range(50):
            write(
                sub / f"file{f}.txt", f"{d}/{f}\n".encode() * (f + 1), 0o755 if f % 7 == 0 else None
            )


TREES: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in [
        single_file,
        single_empty_file,
        single_executable,
        single_absolute_symlink,
        single_dangling_symlink,
        empty_dir,
        mixed,
        byte_order,
        non_ascii_names,
        odd_byte_names,
        deep_nesting,
        wide_dir,
        padding_sizes,
        large_file,
        large_single_file,
        sparse_file,
        modes,
        symlink_targets,
        hardlinks,
        only_dirs,
        symlink_to_dir,
        many_small_files,
    ]
}


@pytest.fixture(params=sorted(TREES))
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    TREES[request.param](root)
    return root


def listing(root: Path) -> list[tuple[str, str, int, bytes]]:
    """What a NAR restore is expected to reproduce: (path, type, permission bits, data/target)."""
    out: list[tuple[str, str, int, bytes]] = []

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out.append((rel, "l", 0, os.fsencode(path.readlink())))
        elif stat.S_ISREG(st.st_mode):
            out.append((rel, "f", stat.S_IMODE(st.st_mode), path.read_bytes()))
        else:
            out.append((rel, "d", stat.S_IMODE(st.st_mode), b""))
            for child in sorted(path.iterdir(), key=lambda p: os.fsencode(p.name)):
                visit(child, f"{rel}/{child.name}")

    visit(root, ".")
    return out


def test_dump_is_byte_identical(tree: Path) -> None:
    expected = run(["nix-store", "--dump", str(tree)])
    assert run([NIXDIST, "nar", "dump", str(tree)]) == expected
    assert b"".join(dump_path(tree, chunk_size=4096)) == expected  # small chunks, same bytes


def test_hash_matches_nix_hash(tree: Path) -> None:
    expected = run(["nix-hash", "--type", "sha256", "--base32", str(tree)])
    assert run([NIXDIST, "nar", "hash", str(tree)]) == expected


def test_restore_matches_nix_restore(tree: Path, tmp_path: Path) -> None:
    nar = run(["nix-store", "--dump", str(tree)])
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    run([NIXDIST, "nar", "restore", str(ours)], stdin=nar)
    run(["nix-store", "--restore", str(theirs)], stdin=nar)
    assert listing(ours) == listing(theirs)
    assert run(["nix-store", "--dump", str(ours)]) == nar


def test_hash_formats(tmp_path: Path) -> None:
    mixed(tmp_path / "t")
    base16 = run(["nix-hash", "--type", "sha256", str(tmp_path / "t")]).decode().strip()
    assert (
        run([NIXDIST, "nar", "hash", "--format", "base16", str(tmp_path / "t")]).decode().strip()
        == base16
    )
    sri = run([NIXDIST, "nar", "hash", "--format", "sri", str(tmp_path / "t")]).decode().strip()
    assert (
        sri
        == run(
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "hash",
                "to-sri",
                f"sha256:{base16}",
            ]
        )
        .decode()
        .strip()
    )


# --------------------------------------------------------------------------------------------
# Errors are one line, never a traceback, and a failed restore leaves nothing behind.


def run_failing(args: list[str], *, stdin: bytes = b"") -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, check=False)
    assert proc.returncode == 1, proc
    assert proc.stdout == b""
    message = proc.stderr.decode()
    assert message.count("\n") == 1, message
    assert "Traceback" not in message
    return message


def test_cli_errors(tmp_path: Path) -> None:
    assert "No such file or directory" in run_failing(
        [NIXDIST, "nar", "dump", str(tmp_path / "missing")]
    )
    os.mkfifo(tmp_path / "fifo")
    assert "unsupported type (fifo)" in run_failing(
        [NIXDIST, "nar", "dump", str(tmp_path / "fifo")]
    )
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "fifo")
    assert "unsupported type (fifo)" in run_failing([NIXDIST, "nar", "hash", str(tmp_path / "d")])
    assert "File exists" in run_failing([NIXDIST, "nar", "restore", str(tmp_path / "d")])


def test_failed_restore_leaves_nothing(tmp_path: Path) -> None:
    mixed(tmp_path / "t")
    nar = run(["nix-store", "--dump", str(tmp_path / "t")])
    target = tmp_path / "out"
    for bad in [nar[: len(nar) // 2], nar + b"trailing", b"garbage!" * 4]:
        message = run_failing([NIXDIST, "nar", "restore", str(target)], stdin=bad)
        assert "bad NAR" in message or "after the end of the NAR" in message
        assert not os.path.lexists(target)


def test_restore_never_follows_its_own_symlinks(tmp_path: Path) -> None:
    """A NAR naming `a` twice (a symlink out of the tree, then a directory) is refused."""

    def s(*tokens: bytes) -> bytes:
        return b"".join(len(t).to_bytes(8, "little") + t + bytes(-len(t) % 8) for t in tokens)

    outside = tmp_path / "outside"
    outside.mkdir()
    nar = (
        s(b"nix-archive-1", b"(", b"type", b"directory")
        + s(b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink")
        + s(b"target", str(outside).encode(), b")", b")")
        + s(b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory")
        + s(b"entry", b"(", b"name", b"f", b"node", b"(", b"type", b"regular")
        + s(b"contents", b"pwned", b")", b")", b")", b")", b")")
    )
    assert "duplicate entry b'a'" in run_failing(
        [NIXDIST, "nar", "restore", str(tmp_path / "t")], stdin=nar
    )
    assert not os.path.lexists(tmp_path / "t")
    assert list(outside.iterdir()) == []


def test_restore_into_missing_parent(tmp_path: Path) -> None:
    nar = run(["nix-store", "--dump", "/etc/hostname"]) if Path("/etc/hostname").exists() else b""
    message = run_failing([NIXDIST, "nar", "restore", str(tmp_path / "no" / "t")], stdin=nar)
    assert "No such file or directory" in message


def test_dump_refuses_trees_deeper_than_the_limit(tmp_path: Path) -> None:
    """Nix would dump this; our reader could not read it back, so the writer refuses it too."""
    levels = [str(tmp_path / "t")]
    for _ in range(MAX_DEPTH + 1):
        levels.append(levels[-1] + "/d")
    for level in levels:  # iteratively: pathlib and os.makedirs recurse per level
        os.mkdir(level)  # noqa: PTH102 - see above
    try:
        message = run_failing([NIXDIST, "nar", "dump", levels[0]])
        assert f"nested deeper than {MAX_DEPTH}" in message
        os.rmdir(levels[-1])  # noqa: PTH106 - depth MAX_DEPTH is fine
        assert run([NIXDIST, "nar", "dump", levels[0]]) == run(["nix-store", "--dump", levels[0]])
    finally:
        for level in reversed(levels):
            if os.path.lexists(level):
                os.rmdir(level)  # noqa: PTH106 - iteratively, as above


def test_dump_into_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """A reader that quits early ends the dump with a failure status, but without a message."""
    large_file(tmp_path / "t")
    dump = subprocess.Popen(
        [NIXDIST, "nar", "dump", str(tmp_path / "t")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with dump:
        assert dump.stdout is not None
        assert dump.stderr is not None
        assert len(dump.stdout.read(100)) == 100
        dump.stdout.close()
        assert dump.stderr.read() == b""
    assert dump.returncode != 0


# --------------------------------------------------------------------------------------------
# Export streams against nix-store --export / --import


def test_export_round_trip_through_nix(tmp_path: Path) -> None:
    """Our export stream is imported by Nix, and Nix exports the very same bytes."""
    mixed(tmp_path / "leaf")
    leaf = run(["nix-store", *NO_SUBST, "--add", str(tmp_path / "leaf")]).decode().strip()
    top = f"/nix/store/{nixbase32.encode(os.urandom(20))}-nixdist-export-test"
    deriver = f"/nix/store/{nixbase32.encode(os.urandom(20))}-nixdist-export-test.drv"
    try:
        # Nix exports the leaf as we decode it
        (record,) = decode_export(run(["nix-store", "--export", leaf]))
        assert record.info == ExportInfo(path=leaf, references=(), deriver=None)
        assert record.nar == run(["nix-store", "--dump", leaf])

        # Nix imports our stream of a path with a reference and a deriver ...
        large_file(tmp_path / "top")
        (tmp_path / "top" / "ref").symlink_to(leaf)
        info = ExportInfo(path=top, references=(leaf,), deriver=deriver)
        stream = b"".join(encode_export([(info, dump_path(tmp_path / "top"))]))
        assert run(["nix-store", "--import"], stdin=stream).decode().split() == [top]
        assert run(["nix-store", "-q", "--references", top]).decode().split() == [leaf]
        assert run(["nix-store", "-q", "--deriver", top]).decode().strip() == deriver
        run(["nix-store", "--verify-path", top])

        # ... and exports exactly the bytes we wrote; two paths come references first
        assert run(["nix-store", "--export", top]) == stream
        both = decode_export(run(["nix-store", "--export", top, leaf]))
        assert [r.info.path for r in both] == [leaf, top]
    finally:
        for path in [top, leaf]:
            subprocess.run(["nix-store", "--delete", path], capture_output=True, check=False)


# --------------------------------------------------------------------------------------------
# Memory


MAX_RSS_KIB = 64 * 1024


def test_dump_of_1gib_file_stays_small(tmp_path: Path) -> None:
    """Streams: a 1 GiB (sparse) file dumps to /dev/null in < 64 MiB RSS. (Takes a few seconds.)"""
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(1 << 30)
        out.seek((1 << 30) - 5)
        out.write(b"end\n")
    # measure in a fresh process so that no earlier child's peak can hide this one's
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    peak_kib = int(run([sys.executable, "-c", probe, NIXDIST, "nar", "dump", str(big)]))
    assert peak_kib < MAX_RSS_KIB, f"peak RSS {peak_kib} KiB"
    peak_kib = int(run([sys.executable, "-c", probe, NIXDIST, "nar", "hash", str(big)]))
    assert peak_kib < MAX_RSS_KIB, f"peak RSS {peak_kib} KiB"


def test_restore_of_1gib_file_stays_small(tmp_path: Path) -> None:
    """The reader streams too: restoring a NAR of a 1 GiB file keeps RSS small. (~6 seconds.)"""
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(1 << 30)
    probe = (
        "import resource, subprocess, sys;"
        "dump = subprocess.Popen(['nix-store', '--dump', sys.argv[1]], stdout=subprocess.PIPE);"
        "subprocess.run(sys.argv[2:], stdin=dump.stdout, check=True);"
        "dump.stdout.close(); assert dump.wait() == 0;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    restored = tmp_path / "restored"
    peak_kib = int(
        run([sys.executable, "-c", probe, str(big), NIXDIST, "nar", "restore", str(restored)])
    )
    assert peak_kib < MAX_RSS_KIB, f"peak RSS {peak_kib} KiB"
    assert restored.stat().st_size == 1 << 30
    restored.unlink()
    big.unlink()
