"""A farm builder on this machine's disk: the directories its namespace covers, and their
files (sshd's and Nix's configuration, keys, the accounts of a builder with a user).

    <farm>/builders/<name>/
        nix/ etc-nix/ etc-ssh/ home/ tmp/      cover /nix, /etc/nix, /etc/ssh, root's home, /tmp
        homes/ accounts/{passwd,group}         with a user: /home, /etc/passwd, /etc/group
        stage/                                 the chroot's staging directory (versioned Nix)

`nixdist.farm.farm.Farm` decides when to prepare a builder; this module knows what that means.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from nixdist.farm import launch, render
from nixdist.farm.errors import FarmError
from nixdist.farm.rootfs import ensure_rootfs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nixdist.farm.spec import BuilderSpec
    from nixdist.farm.statefile import BuilderRecord


def inner_targets(*, chroot: bool = False) -> tuple[tuple[str, str], ...]:
    """(directory under builders/<name>/, the path it covers inside the builder)."""
    return (
        ("nix", "/nix"),
        ("etc-nix", "/etc/nix"),
        ("etc-ssh", "/etc/ssh"),
        # Where sshd and bash look for root's files (a root filesystem's passwd says /root).
        ("home", "/root" if chroot else pwd.getpwuid(0).pw_dir),
        ("tmp", "/tmp"),  # noqa: S108 - the builder's own /tmp, a mount point
    )


def user_targets() -> tuple[tuple[str, str], ...]:
    """What a builder with a user also covers: (path under builders/<name>/, inner path)."""
    return (
        ("homes", "/home"),
        ("accounts/passwd", "/etc/passwd"),
        ("accounts/group", "/etc/group"),
    )


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def check_host(directory: Path, sshd: str | None) -> None:
    """Refuse to start a farm this machine cannot run (not root, tools missing, a bad farm
    directory) and make the mount points builders cover."""
    if os.geteuid() != 0:
        raise FarmError("the farm needs root (mount namespaces, bind mounts, sshd)")
    missing = [
        f"{tool} ({package})"
        for tool, package in (
            ("unshare", "util-linux"),
            ("nsenter", "util-linux"),
            ("setsid", "util-linux"),
            ("ssh-keygen", "openssh-client"),
            ("nix-store", "nix-bin"),
        )
        if shutil.which(tool, path=launch.CLEAN_ENV["PATH"]) is None
    ]
    if sshd is None or not Path(sshd).is_absolute():
        missing.append("sshd (openssh-server)")
    if missing:
        raise FarmError(f"missing on this machine: {', '.join(missing)}")
    if any(c.isspace() for c in str(directory)):
        raise FarmError(
            f"the farm directory {str(directory)!r} contains whitespace, which"
            " NIX_SSHOPTS and ssh_config cannot carry"
        )
    for inside in directory.parents:
        if str(inside) in {"/nix", "/etc/nix", "/etc/ssh"}:
            raise FarmError(f"the farm directory cannot live under {inside}")
    # sshd's privilege-separation directory, and the mount points a builder covers.
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    for _, target in (*inner_targets(), ("homes", "/home")):
        Path(target).mkdir(mode=0o755, parents=True, exist_ok=True)


def prepare_builder(base: Path, record: BuilderRecord, client_key: Path) -> None:
    """Create the builder's directories and keys in `base` if needed; (re)write its config
    files."""
    spec = record.spec
    for sub, _ in inner_targets():
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "stage").mkdir(exist_ok=True)
    (base / "tmp").chmod(0o1777)
    (base / "nix" / "store").mkdir(exist_ok=True)  # Nix makes the rest on first use
    etc_ssh = base / "etc-ssh"
    host_key = etc_ssh / Path(render.INNER_HOST_KEY).name
    if not host_key.exists():
        launch.keygen(host_key, comment=f"nixdist-farm-{spec.name}")
    client_pub = client_key.with_name(client_key.name + ".pub").read_text()
    atomic_write(etc_ssh / Path(render.INNER_AUTHORIZED_KEYS).name, client_pub)
    root = "/" if spec.nix is None else str(ensure_rootfs(spec.nix))
    sshd_config = render.render_sshd_config(
        record.port, user=spec.user, sshd_version=launch.sshd_version(root)
    )
    atomic_write(etc_ssh / Path(render.INNER_SSHD_CONFIG).name, sshd_config)
    if spec.user is not None:
        _prepare_user(base, spec, spec.user, client_pub)
    etc_nix = base / "etc-nix"
    atomic_write(etc_nix / "nix.conf", render.render_nix_conf(spec))
    atomic_write(etc_nix / render.BUILDER_NAME_FILE, f"{spec.name}\n")
    atomic_write(etc_nix / render.BUILDER_SPEED_FILE, render.render_speed_file(spec))


def user_home(base: Path, user: str) -> Path:
    """The home of the builder's `user` (under its directory `base`)."""
    return base / "homes" / user


def _prepare_user(base: Path, spec: BuilderSpec, user: str, client_pub: str) -> None:
    """The builder's accounts (its root's passwd and group with the user and the build
    users added) and the user's home, with the farm's key in its authorized_keys."""
    root = Path("/") if spec.nix is None else ensure_rootfs(spec.nix)
    id_base = render.account_id_base(str(base))
    passwd = render.render_passwd((root / "etc" / "passwd").read_text(), spec, id_base=id_base)
    group = render.render_group((root / "etc" / "group").read_text(), spec, id_base=id_base)
    atomic_write(base / "accounts" / "passwd", passwd)
    atomic_write(base / "accounts" / "group", group)
    home = user_home(base, user)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ssh_dir / "authorized_keys", client_pub, mode=0o600)
    for path in (home, ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, id_base, id_base)
    home.chmod(0o700)
    ssh_dir.chmod(0o700)


def chroot_argv(
    base: Path,
    spec: BuilderSpec,
    command: Sequence[str],
    *,
    farm_dir: Path,
    pidfile: Path | None = None,
) -> list[str]:
    """`command` in a namespace of builder `spec` (which has a Nix version), chrooted."""
    assert spec.nix is not None  # noqa: S101 - narrowing; only called for such builders
    mounts = [(str(base / sub), target) for sub, target in inner_targets(chroot=True)]
    if spec.user is not None:
        mounts += [(str(base / sub), target) for sub, target in user_targets()]
    mounts += [
        ("/proc", "/proc"),
        ("rbind:/dev", "/dev"),
        ("rbind:/sys", "/sys"),
        (str(farm_dir), str(farm_dir)),
    ]
    return launch.chroot_argv(
        stage=base / "stage",
        rootfs=ensure_rootfs(spec.nix),
        mounts=mounts,
        command=command,
        pidfile=pidfile,
    )


def mount_args(base: Path, spec: BuilderSpec, *, farm_dir: Path) -> list[str]:
    """Source/target pairs for the launch script, a target covering the farm dir last."""
    targets = inner_targets() + (user_targets() if spec.user is not None else ())
    pairs = [(str(base / sub), target) for sub, target in targets]
    covering = [p for p in pairs if farm_dir.is_relative_to(p[1])]
    ordered = [p for p in pairs if p not in covering] + covering
    return [item for pair in ordered for item in pair]


def valid_paths(db: Path, *, only_built: bool = False) -> tuple[str, ...]:
    """The valid paths in a builder's store database (those it built itself with
    `only_built`: Nix marks them ultimate), sorted."""
    if not db.exists():
        return ()
    query = "SELECT path FROM ValidPaths"
    if only_built:
        query += " WHERE ultimate = 1"
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            rows = conn.execute(query + " ORDER BY path").fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return ()  # Nix is creating the database right now
        raise FarmError(f"cannot read the store database {db}: {err}") from None
    except sqlite3.Error as err:
        raise FarmError(f"cannot read the store database {db}: {err}") from None
    return tuple(str(row[0]) for row in rows)
