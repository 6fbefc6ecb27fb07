"""Debian root filesystems, one per Nix version, for farm builders and clients to chroot into.

`ensure_rootfs` builds one with ``debootstrap --variant=minbase`` from Debian's archive the
first time it is asked for (a few minutes), and returns the cached one afterwards::

    /var/cache/nixdist/rootfs/          ($NIXDIST_ROOTFS_DIR overrides the parent)
        bookworm/                       a finished root filesystem (never written again)
            nixdist-rootfs.json         {"version": "2.8", "suite": ..., "nix_version": ...}
        .bookworm.lock                  flock'ed while bookworm is built
        .bookworm.tmp/                  being built; renamed to bookworm/ when complete
        bookworm.debootstrap.log        debootstrap's output (and its own log when it fails)

The mirror is http://deb.debian.org/debian unless ``$NIXDIST_DEBIAN_MIRROR`` names another.
A build goes into the temporary sibling and is renamed into place only when complete, so a
finished directory is always whole; a temporary left by a killed run is removed and built
again. Waiting for another process's build is bounded. debootstrap runs in a mount namespace
of its own, so the /proc and /sys it mounts in the target vanish with it even when it is killed.

Besides what debootstrap installs (nix-bin, openssh-server, openssh-client, python3 and
``libdbi-perl``: debootstrap does not resolve the virtual ``perl-dbdabi-94`` that nix-bin's
``libdbd-sqlite3-perl`` needs), each root filesystem gets a ``nixbld`` group with the build
users ``nixbld1`` … ``nixbld8`` in it (as Debian's nix-setup-systemd makes them), so a
nix-daemon inside can use build users, and ``/run/sshd``.

Nothing ever writes into a finished root filesystem: builders and clients mount it as the
lower layer of an overlay of their own (see `nixdist.farm.launch`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.farm.errors import FarmError
from nixdist.farm.launch import CLEAN_ENV, IN_NEW_NAMESPACE
from nixdist.farm.releases import NixRelease, release

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

DEFAULT_ROOTFS_DIR: Final = Path("/var/cache/nixdist/rootfs")
ROOTFS_DIR_ENV: Final = "NIXDIST_ROOTFS_DIR"
MIRROR: Final = "http://deb.debian.org/debian"
MIRROR_ENV: Final = "NIXDIST_DEBIAN_MIRROR"  # another Debian mirror (a local one)
PACKAGES: Final = ("nix-bin", "openssh-server", "openssh-client", "python3", "libdbi-perl")
INFO_FILE: Final = "nixdist-rootfs.json"
BUILD_USERS: Final = 8
#: debootstrap of one suite takes 2-4 minutes here; these bound a hung mirror or a stuck lock.
DEBOOTSTRAP_TIMEOUT: Final = 1200.0
LOCK_TIMEOUT: Final = DEBOOTSTRAP_TIMEOUT + 300.0
_CHROOT_TIMEOUT: Final = 120.0
#: ``<root> <argv...>``: argv chrooted in root, with /proc (Nix reads /proc/self/exe).
_WITH_PROC: Final = (
    *IN_NEW_NAMESPACE,
    'set -e; mount --bind /proc "$1/proc"; root=$1; shift; exec chroot "$root" "$@"',
    "nixdist-rootfs-chroot",
)
#: The PATH of a Debian root filesystem (what login shells and sshd sessions use).
ROOTFS_PATH: Final = CLEAN_ENV["PATH"]
#: Mount points a builder or client covers; created in every root filesystem.
_MOUNT_POINTS: Final = ("nix", "etc/nix", "etc/ssh", "root", "tmp", "proc", "dev", "sys", "run")


@dataclass(frozen=True, slots=True, kw_only=True)
class RootfsInfo:
    """A finished root filesystem and what it holds."""

    path: Path
    version: str
    suite: str
    #: The first line of ``nix --version`` inside, e.g. ``nix (Nix) 2.34.8``.
    nix_version: str


def rootfs_parent() -> Path:
    env = os.environ.get(ROOTFS_DIR_ENV)
    return Path(env) if env else DEFAULT_ROOTFS_DIR


def rootfs_path(version: str) -> Path:
    """Where the root filesystem of Nix `version` is (or will be) cached."""
    return rootfs_parent() / release(version).suite


def rootfs_info(version: str) -> RootfsInfo | None:
    """The cached root filesystem of `version`, or None when it has not been built."""
    path = rootfs_path(version)
    try:
        data = json.loads((path / INFO_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise FarmError(f"unreadable {path / INFO_FILE}: {err}") from None
    return RootfsInfo(
        path=path, version=version, suite=str(data["suite"]), nix_version=str(data["nix_version"])
    )


def ensure_rootfs(version: str) -> Path:
    """The root filesystem of Nix `version`, built first if it is not cached yet."""
    return ensure_rootfs_info(version).path


def ensure_rootfs_info(version: str) -> RootfsInfo:
    found = rootfs_info(version)
    if found is not None:
        return found
    rel = release(version)
    parent = rootfs_parent()
    parent.mkdir(parents=True, exist_ok=True)
    with _flock(parent / f".{rel.suite}.lock", timeout=LOCK_TIMEOUT):
        found = rootfs_info(version)  # built by whoever held the lock before us
        if found is not None:
            return found
        return _build(rel, parent)


def ensure_rootfs_many(versions: Sequence[str]) -> list[RootfsInfo]:
    """`ensure_rootfs_info` for each of `versions`, the missing ones built side by side."""
    unique = list(dict.fromkeys(versions))
    for version in unique:
        release(version)  # fail on a bad name before starting anything
    with ThreadPoolExecutor(max_workers=max(1, len(unique))) as pool:
        return list(pool.map(ensure_rootfs_info, unique))


@contextlib.contextmanager
def _flock(path: Path, *, timeout: float) -> Iterator[None]:
    with path.open("a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FarmError(
                        f"waited {timeout:.0f} s for the lock {path} (another process is"
                        " building this root filesystem, or hangs holding the lock)"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(rel: NixRelease, parent: Path) -> RootfsInfo:
    final = parent / rel.suite
    tmp = parent / f".{rel.suite}.tmp"
    log = parent / f"{rel.suite}.debootstrap.log"
    _remove_tree(tmp)
    _debootstrap(rel, tmp, log)
    _add_build_users(tmp)
    for point in _MOUNT_POINTS:
        (tmp / point).mkdir(mode=0o755, parents=True, exist_ok=True)
    (tmp / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)
    for deb in (tmp / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # ~150 MB the root filesystem never needs again
    nix_version = _chroot_output(tmp, ["nix", "--version"]).splitlines()[0].strip()
    info = {"version": rel.version, "suite": rel.suite, "nix_version": nix_version}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(final)
    return RootfsInfo(path=final, version=rel.version, suite=rel.suite, nix_version=nix_version)


def _debootstrap(rel: NixRelease, target: Path, log: Path) -> None:
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        rel.suite,
        str(target),
        os.environ.get(MIRROR_ENV) or MIRROR,
    ]
    if rel.script is not None:
        argv.append(rel.script)
    if shutil.which("debootstrap", path=ROOTFS_PATH) is None:
        raise FarmError("debootstrap is not installed (apt-get install debootstrap)")
    with log.open("w") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(CLEAN_ENV),
            cwd="/",
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=DEBOOTSTRAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise FarmError(
                f"debootstrap of {rel.suite} did not finish in {DEBOOTSTRAP_TIMEOUT:.0f} s;"
                f" see {log}"
            ) from None
    if code != 0:
        inner = target / "debootstrap" / "debootstrap.log"
        if inner.exists():  # the details of a failed dpkg run are only in there
            with log.open("a") as out:
                out.write(f"\n--- {inner}\n{inner.read_text(errors='replace')}")
        raise FarmError(
            f"debootstrap of {rel.suite} failed (exit {code}): {_last_error(log)}; see {log}"
        )


def _last_error(log: Path) -> str:
    """debootstrap's last ``E:`` line (its own reason), else the log's last line."""
    lines = log.read_text(errors="replace").strip().splitlines() or ["(empty log)"]
    errors = [line for line in lines if line.startswith("E: ")]
    return (errors or lines)[-1].strip()


def _add_build_users(root: Path) -> None:
    _chroot_output(root, ["groupadd", "--system", "nixbld"])
    for i in range(1, BUILD_USERS + 1):
        _chroot_output(
            root,
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/var/empty",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                "nixbld",
                "--groups",
                "nixbld",
                "--comment",
                f"Nix build user {i}",
                f"nixbld{i}",
            ],
        )


def _chroot_output(root: Path, argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            [*_WITH_PROC, str(root), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(CLEAN_ENV),
            cwd="/",
            check=False,
            timeout=_CHROOT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise FarmError(
            f"in {root}: {' '.join(argv)} did not finish in {_CHROOT_TIMEOUT:.0f} s"
        ) from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise FarmError(f"in {root}: {' '.join(argv)} exited with {result.returncode}: {stderr}")
    return result.stdout.decode(errors="replace")


def _remove_tree(path: Path) -> None:
    """Remove a leftover build, unmounting first whatever is still mounted inside it."""
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if _mounts_under(path):
        raise FarmError(f"cannot remove {path}: something is still mounted inside it")
    shutil.rmtree(path)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found: list[str] = []
    with Path("/proc/self/mountinfo").open() as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found
