"""`nixdist setup`: point Nix's ``build-hook`` at nixdist-hook in ``nix.conf`` (and ``builders``).

Which file: ``--nix-conf PATH``, default the system file Nix reads first,
``$NIX_CONF_DIR/nix.conf`` (``/etc/nix/nix.conf``). A symlink is followed and its target
changed (the link stays); a symlink into ``/nix/store`` (NixOS, home-manager) is refused, as
that file is generated from a configuration that must be changed instead.

What: ``build-hook = <hook>``, where the hook is ``--hook PATH`` or the ``nixdist-hook``
installed next to the running Python. Nix 2.8 execs ``build-hook`` as one absolute path (a
``PathSetting``: no arguments, no ``~``), so the path is made absolute and must be an
executable file. With ``--machines FILE``: ``builders = @<FILE, absolute>`` (the file must
exist and parse); with ``--builders VALUE``: ``builders = VALUE`` as given.

How (the text work is `nixdist.model.nixconf_edit`): an existing line for the setting is
changed in place, a missing one appended; comments, other lines and ``include`` lines stay
byte for byte. The new text is parsed as Nix would read it (includes too) and must yield the
new values from this file, or nothing is written. The change is printed as a unified diff.
When nothing changes, nothing is written and that is said. Otherwise the previous file is
kept as ``<file>.nixdist-backup`` (the version just before the last change ``setup`` made; an
earlier backup is replaced) and the new text is written atomically: a temporary file in the
same directory, flushed, given the old file's mode and owner, then renamed over it. A missing
file (and its directory) is created, mode 0644, without a backup. ``--dry-run`` prints the
diff and writes nothing.

Nix reads ``nix.conf`` when it starts: a running ``nix-daemon`` keeps its old settings until it
is restarted. Builds run without the daemon (as root, or ``--store local``) see the change at
once.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click

from nixdist.errors import ConfigError
from nixdist.model.machines import parse_machines
from nixdist.model.nixconf import load_nix_conf, nix_conf_sources
from nixdist.model.nixconf_edit import check_settings, check_value, set_setting, value_words
from nixdist.state.config import effective_build_hook, host_system, read_config_file

BACKUP_SUFFIX: Final = ".nixdist-backup"
NEW_FILE_MODE: Final = 0o644
_STORE_DIR: Final = "/nix/store/"
_UNSAFE_IN_PATH: Final = frozenset(" \t\r\n#;")
RESTART_HINT: Final = (
    "Nix reads nix.conf when it starts: restart the nix-daemon to use the change "
    "(systemctl restart nix-daemon)."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupOptions:
    """What to write where: the settings in the order they are applied."""

    nix_conf: Path
    settings: tuple[tuple[str, str], ...]
    dry_run: bool


def default_hook() -> Path:
    """The ``nixdist-hook`` installed with this Python (its bin directory, symlinks kept)."""
    return Path(os.path.abspath(sys.executable)).with_name("nixdist-hook")  # noqa: PTH100 - keep symlinks, as sys.executable names the venv


def _plain_path(path: str, what: str) -> str:
    bad = sorted(_UNSAFE_IN_PATH.intersection(path))
    if bad:
        raise ConfigError(
            f"{path!r} contains {' '.join(map(repr, bad))}, which nix.conf cannot hold",
            file=what,
        )
    return path


def _hook_path(hook: str | None) -> str:
    path = default_hook() if hook is None else Path(os.path.abspath(hook))  # noqa: PTH100 - no symlink resolution
    if not (path.is_file() and os.access(path, os.X_OK)):
        hint = "" if hook is not None else " (it is installed with nixdist; or pass --hook PATH)"
        raise ConfigError(f"not an executable file{hint}", file=str(path))
    return _plain_path(str(path), "build hook")


def _machines_value(machines: str) -> str:
    path = _plain_path(os.path.abspath(machines), "machines file")  # noqa: PTH100 - a str path
    if read_config_file(path) is None:
        raise ConfigError("no such machines file", file=path)
    found = parse_machines(
        f"@{path}", source="--machines", read_file=read_config_file, default_system=host_system()
    )
    if not found:
        click.echo(f"warning: {path} lists no machines", err=True)
    return f"@{path}"


def make_options(
    *,
    nix_conf: str | None,
    hook: str | None,
    builders: str | None,
    machines: str | None,
    dry_run: bool,
) -> SetupOptions:
    """Check the command line and turn it into `SetupOptions`."""
    if builders is not None and machines is not None:
        raise click.UsageError("give --builders or --machines, not both")
    conf = nix_conf if nix_conf is not None else nix_conf_sources(os.environ)[0]
    settings = [("build-hook", _hook_path(hook))]
    if machines is not None:
        settings.append(("builders", _machines_value(machines)))
    elif builders is not None:
        settings.append(("builders", check_value("builders", builders)))
    return SetupOptions(
        nix_conf=Path(os.path.abspath(conf)),  # noqa: PTH100 - symlinks are followed later
        settings=tuple(settings),
        dry_run=dry_run,
    )


def _target(path: Path) -> Path:
    """The file to change: `path`, or what it links to; refused if it cannot be one."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if str(target).startswith(_STORE_DIR):
        raise ConfigError(
            f"a symlink into the Nix store ({target}), generated by NixOS or home-manager: "
            "set build-hook (nix.settings) in that configuration instead",
            file=str(path),
        )
    if target.exists() and not target.is_file():
        raise ConfigError("not a regular file", file=str(path))
    return target


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}", file=str(path)) from None


def render_diff(old: str, new: str, *, path: str, existed: bool) -> str:
    """A unified diff from `old` to `new`, with ``\\ No newline at end of file`` as diff says."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=path if existed else "/dev/null",
        tofile=path,
    )
    return "".join(
        line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n" for line in lines
    )


def write_atomically(path: Path, data: bytes, *, like: os.stat_result | None) -> None:
    """Replace `path` by a file holding `data`, all at once, with the mode and owner of `like`.

    Raises `OSError`.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            mode = NEW_FILE_MODE if like is None else stat.S_IMODE(like.st_mode)
            os.fchmod(out.fileno(), mode)
            if like is not None and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                # Not ours to give away without root: then the file becomes the writer's.
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), like.st_uid, like.st_gid)
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def run(opts: SetupOptions) -> int:
    """Apply `opts`; prints the diff and what was done. Raises `ConfigError` on failure."""
    shown = str(opts.nix_conf)
    target = _target(opts.nix_conf)
    old = _read(target)
    new = old or ""
    for name, value in opts.settings:
        new = set_setting(new, name, value)
    if new == old:
        said = ", ".join(f"{name} = {value}" for name, value in opts.settings)
        click.echo(f"{shown} already has {said}: nothing changed")
        return 0
    # Nix takes relative includes from the directory of the path it opened (the link's).
    check_settings(new, source=shown, wanted=dict(opts.settings), read_file=read_config_file)
    encoded = render_diff(old or "", new, path=shown, existed=old is not None)
    click.echo(encoded.encode("utf-8", "surrogateescape"), nl=False)
    if opts.dry_run:
        click.echo(f"dry run: {shown} not changed")
        return 0
    backup = target.with_name(target.name + BACKUP_SUFFIX)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        like = target.stat() if old is not None else None
        if old is not None:
            write_atomically(backup, old.encode("utf-8", "surrogateescape"), like=like)
        write_atomically(target, new.encode("utf-8", "surrogateescape"), like=like)
    except OSError as err:
        raise ConfigError(f"cannot write: {err.strerror or err}", file=shown) from None
    click.echo(f"wrote {shown}" + (f" (previous version: {backup})" if old is not None else ""))
    _warn_if_overridden(opts, target)
    _warn_if_ignored(opts, target)
    click.echo(RESTART_HINT)
    return 0


def _warn_if_overridden(opts: SetupOptions, target: Path) -> None:
    """Say so when a later configuration file (a user's, ``$NIX_CONFIG``) overrides ours."""
    sources = nix_conf_sources(os.environ)
    if str(target) not in sources and str(opts.nix_conf) not in sources:
        return
    try:
        conf = load_nix_conf(os.environ, read_file=read_config_file)
    except ConfigError as err:
        click.echo(f"warning: Nix's configuration does not parse: {err}", err=True)
        return
    for name, value in opts.settings:
        origin = conf.origins.get(name)
        if conf.values.get(name) != value_words(value) and origin is not None:
            click.echo(
                f"warning: for this user, {name} is overridden by {origin[0]}:{origin[1]}",
                err=True,
            )


def _warn_if_ignored(opts: SetupOptions, target: Path) -> None:
    """Say so when the installed Nix ignores build-hook in nix.conf (2.25 to 2.33,
    NixOS/nix#15083), and how to give it instead."""
    hook = dict(opts.settings).get("build-hook")
    if hook is None or target.name != "nix.conf":
        return
    env = {k: v for k, v in os.environ.items() if k != "NIX_CONFIG"}
    env |= {"NIX_CONF_DIR": str(target.parent), "NIX_USER_CONF_FILES": ""}
    effective = effective_build_hook(env)
    if effective is None or effective == hook:
        return
    click.echo(
        f"warning: this Nix ignores build-hook in nix.conf and uses {effective} (Nix 2.25 to"
        " 2.33, NixOS/nix#15083). Give it to nix-daemon in its environment instead, e.g. in"
        " /etc/systemd/system/nix-daemon.service.d/nixdist.conf:\n"
        f'  [Service]\n  Environment="NIX_CONFIG=build-hook = {hook}"\n'
        "or pass --option build-hook to nix-build; Nix 2.34 reads nix.conf again.",
        err=True,
    )


@click.command()
@click.option(
    "--nix-conf",
    metavar="PATH",
    help="The nix.conf to change (default: $NIX_CONF_DIR/nix.conf, else /etc/nix/nix.conf).",
)
@click.option(
    "--hook",
    metavar="PATH",
    help="The build hook to use (default: the nixdist-hook installed next to this Python).",
)
@click.option("--builders", metavar="VALUE", help="Also write 'builders = VALUE', as given.")
@click.option(
    "--machines", metavar="FILE", help="Also write 'builders = @FILE' (FILE made absolute)."
)
@click.option("--dry-run", is_flag=True, help="Print the change; write nothing.")
def setup(
    nix_conf: str | None,
    hook: str | None,
    builders: str | None,
    machines: str | None,
    dry_run: bool,
) -> int:
    """Make Nix hand remote builds to nixdist: write build-hook (and builders) into nix.conf.

    An existing line is changed in place and nothing else in the file is touched, so a second
    run changes nothing. Prints the change as a diff and keeps the previous file as
    nix.conf.nixdist-backup.

    \b
    Nix reads nix.conf when it starts: restart the nix-daemon afterwards
    (systemctl restart nix-daemon).
    """
    return run(
        make_options(
            nix_conf=nix_conf, hook=hook, builders=builders, machines=machines, dry_run=dry_run
        )
    )
