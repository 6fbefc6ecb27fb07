"""`nixdist farm`: run N Nix builder hosts on this machine (root only). See `nixdist.farm`.

    nixdist farm up --count 3
    nixdist farm up --builder b1:jobs=2 --builder 'b2:systems=x86_64-linux,aarch64-linux;speed=2'
    nixdist farm up --config farm.toml --ssh-include
    nixdist farm status [--json]
    nixdist farm stop|start|freeze|thaw NAME
    nixdist farm noise NAME --on|--off
    nixdist farm noproc NAME --on|--off
    nixdist farm heal
    nixdist farm env                     # shell lines for a Nix client
    nixdist farm down [--ssh-include]
    nixdist farm reset
    nixdist farm rootfs [--nix 2.34]...     # build (once) or show the Nix root filesystems
    nixdist farm client --nix 2.34 [--daemon] [--sandbox] -- nix-build ...

Every subcommand takes ``--dir`` (default ``$NIXDIST_FARM_DIR`` or /var/lib/nixdist/farm).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from nixdist.farm import (
    FARM_DIR_ENV,
    BuilderStatus,
    Farm,
    combine_specs,
    default_farm_dir,
    load_farm_toml,
    parse_builder_option,
)
from nixdist.farm.releases import KNOWN_VERSIONS
from nixdist.farm.rootfs import ensure_rootfs_many, rootfs_info, rootfs_path

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_P = ParamSpec("_P")
_R = TypeVar("_R")

_BUILDER_HELP = (
    "A builder: NAME[:KEY=VALUE;...] with keys systems (comma list; first is the system,"
    " the rest extra-platforms), features, mandatory (comma lists), jobs, speed,"
    f" nix ({', '.join(KNOWN_VERSIONS)}; default: the host's Nix), user (an ordinary user"
    " to log in as, with a nix-daemon owning the store; default root), trusted (true/false:"
    " user in trusted-users; default true), scheme (ssh or ssh-ng; default ssh)."
    " Repeatable; replaces a builder of the same name."
)


def _dir_option(func: Callable[_P, _R]) -> Callable[_P, _R]:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Farm directory [default: ${FARM_DIR_ENV} or /var/lib/nixdist/farm].",
    )(func)


def _farm(directory: Path | None, alias_prefix: str | None = None) -> Farm:
    return Farm(directory or default_farm_dir(), alias_prefix=alias_prefix)


def _features(status: BuilderStatus) -> str:
    spec = status.spec
    items = sorted(spec.supported_features) + [
        f"{f}(mandatory)" for f in sorted(spec.mandatory_features)
    ]
    return ",".join(items) or "-"


def _table(statuses: Sequence[BuilderStatus]) -> str:
    header = (
        "NAME",
        "ALIAS",
        "PORT",
        "PID",
        "STATE",
        "SYSTEMS",
        "FEATURES",
        "JOBS",
        "SPEED",
        "NIX",
        "PATHS",
    )
    rows = [header]
    for s in statuses:
        state = f"{s.state}{' noisy' if s.noisy else ''}"
        rows.append(
            (
                s.name,
                s.alias,
                str(s.port),
                str(s.pid) if s.pid is not None else "-",
                state,
                ",".join(s.spec.systems),
                _features(s),
                str(s.spec.max_jobs),
                str(s.spec.speed_factor),
                s.spec.nix or "host",
                str(s.store_paths),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _as_json(status: BuilderStatus) -> dict[str, object]:
    return {
        "name": status.name,
        "alias": status.alias,
        "port": status.port,
        "pid": status.pid,
        "state": str(status.state),
        "mount_ns": status.mount_ns,
        "systems": list(status.spec.systems),
        "features": sorted(status.spec.supported_features),
        "mandatory": sorted(status.spec.mandatory_features),
        "jobs": status.spec.max_jobs,
        "speed": status.spec.speed_factor,
        "nix": status.spec.nix,
        "user": status.spec.user,
        "trusted": status.spec.trusted,
        "scheme": str(status.spec.scheme),
        "store_paths": status.store_paths,
        "noisy": status.noisy,
    }


def _hints(farm: Farm) -> str:
    return (
        f"machines file: {farm.machines_file}\n"
        f"ssh config:    {farm.ssh_config}\n"
        f"use: NIX_SSHOPTS={shlex.quote(farm.nix_sshopts)} nix-build ..."
        f" --builders @{farm.machines_file}"
    )


def _count(count: int | None, old_count: int | None) -> int | None:
    """--count, or --builders, its deprecated name (with a warning on stderr)."""
    if old_count is None:
        return count
    if count is not None:
        raise click.UsageError("give --count only (--builders is its old name)")
    click.echo("warning: 'nixdist farm up --builders N' is deprecated; use --count N", err=True)
    return old_count


@click.group()
def farm() -> None:
    """Run Nix builder hosts on this machine: sshd + own store per builder (needs root)."""


@farm.command()
@_dir_option
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="N plain builders b1..bN (host system, 1 job).",
)
@click.option(
    # Its name before --count; `nixdist setup --builders` is nix.conf's builders value.
    "--builders",
    "old_count",
    type=click.IntRange(min=0),
    default=None,
    hidden=True,
)
@click.option("--builder", "builder_specs", multiple=True, metavar="SPEC", help=_BUILDER_HELP)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML farm file ([builders.NAME] tables).",
)
@click.option(
    "--alias-prefix",
    default=None,
    help="ssh aliases are PREFIX+NAME [default: nixdist-, or as before].",
)
@click.option(
    "--ssh-include",
    is_flag=True,
    help="Also add 'Include <farm>/ssh_config' at the top of ~/.ssh/config.",
)
def up(  # click passes options by name
    *,
    directory: Path | None,
    count: int | None,
    old_count: int | None,
    builder_specs: tuple[str, ...],
    config_file: Path | None,
    alias_prefix: str | None,
    ssh_include: bool,
) -> None:
    """Create and start the builders (idempotent: running builders are left alone).

    Without --count/--builder/--config the farm keeps the builders it has (two plain
    builders for a new farm). Builders not named any more are stopped and removed.
    """
    config = load_farm_toml(config_file) if config_file is not None else None
    prefix = alias_prefix or (config.alias_prefix if config else None)
    specs = combine_specs(
        config=config.builders if config else (),
        count=_count(count, old_count),
        overrides=[parse_builder_option(text) for text in builder_specs],
    )
    the_farm = _farm(directory, prefix)
    statuses = the_farm.up(specs)
    if ssh_include and the_farm.install_ssh_include():
        click.echo(f"added Include {the_farm.ssh_config} to ~/.ssh/config")
    click.echo(_table(statuses))
    click.echo(_hints(the_farm))


@farm.command()
@_dir_option
@click.option(
    "--ssh-include", is_flag=True, help="Also remove the farm's Include from ~/.ssh/config."
)
def down(directory: Path | None, ssh_include: bool) -> None:
    """Stop every builder; nothing of the farm keeps running. Stores are kept."""
    the_farm = _farm(directory)
    the_farm.down()
    if ssh_include and the_farm.remove_ssh_include():
        click.echo(f"removed Include {the_farm.ssh_config} from ~/.ssh/config")


@farm.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per builder, in a list.")
def status(directory: Path | None, as_json: bool) -> None:
    """Show the builders: port, sshd pid, running/frozen/stopped, systems, store size."""
    statuses = _farm(directory).status()
    if as_json:
        click.echo(json.dumps([_as_json(s) for s in statuses], indent=2))
    elif statuses:
        click.echo(_table(statuses))
    else:
        click.echo("no builders (run: nixdist farm up)")


@farm.command()
@_dir_option
def reset(directory: Path | None) -> None:
    """Stop everything, empty every builder's store, remove the ~/.ssh/config Include."""
    _farm(directory).reset()


@farm.command()
@_dir_option
@click.argument("name")
def start(directory: Path | None, name: str) -> None:
    """Start builder NAME again (same port and host key)."""
    _farm(directory).start(name)


@farm.command()
@_dir_option
@click.argument("name")
def stop(directory: Path | None, name: str) -> None:
    """Kill builder NAME: its sshd, its sessions and its builds (SIGKILL)."""
    _farm(directory).stop(name)


@farm.command()
@_dir_option
@click.argument("name")
def freeze(directory: Path | None, name: str) -> None:
    """SIGSTOP every process of builder NAME (connections hang)."""
    pids = _farm(directory).freeze(name)
    click.echo(f"froze {len(pids)} processes of {name}")


@farm.command()
@_dir_option
@click.argument("name")
def thaw(directory: Path | None, name: str) -> None:
    """SIGCONT every process of builder NAME."""
    _farm(directory).thaw(name)


@farm.command()
@_dir_option
@click.argument("name")
@click.option("--on/--off", "noisy", default=True, help="Make root's shell print, or stop it.")
def noise(directory: Path | None, name: str, noisy: bool) -> None:
    """Make root's shell on builder NAME print a line on stdout (breaks nix-store --serve)."""
    _farm(directory).set_noisy(name, noisy=noisy)


@farm.command()
@_dir_option
@click.argument("name")
@click.option("--on/--off", "hidden", default=True, help="Cover /proc's load files, or uncover.")
def noproc(directory: Path | None, name: str, hidden: bool) -> None:
    """Cover /proc/loadavg and /proc/meminfo on builder NAME (what macOS shows a Linux probe)."""
    _farm(directory).hide_proc(name, hidden=hidden)


@farm.command()
@_dir_option
def heal(directory: Path | None) -> None:
    """Undo every fault: thaw, start stopped builders, silence noisy shells."""
    click.echo(_table(_farm(directory).heal()))


@farm.command()
@_dir_option
def env(directory: Path | None) -> None:
    """Print shell lines that point a Nix client at the farm (eval "$(nixdist farm env)")."""
    the_farm = _farm(directory)
    click.echo(f"export NIX_SSHOPTS={shlex.quote(the_farm.nix_sshopts)}")
    click.echo(f"export NIX_REMOTE_SYSTEMS={shlex.quote(str(the_farm.machines_file))}")


_NIX_CHOICE = click.Choice(KNOWN_VERSIONS)


@farm.command()
@click.option(
    "--nix",
    "versions",
    type=_NIX_CHOICE,
    multiple=True,
    help="A Nix version (repeatable) [default: every known one].",
)
@click.option("--check", is_flag=True, help="Only report; build nothing (exit 1 if missing).")
def rootfs(versions: tuple[str, ...], check: bool) -> int:
    """Build (once, side by side) or show the Debian root filesystems of Nix versions.

    They are cached in $NIXDIST_ROOTFS_DIR or /var/cache/nixdist/rootfs.
    """
    wanted = list(versions) or list(KNOWN_VERSIONS)
    if check:
        missing = 0
        for version in wanted:
            info = rootfs_info(version)
            if info is None:
                missing += 1
                click.echo(f"{version}  missing  {rootfs_path(version)}")
            else:
                click.echo(f"{version}  {info.nix_version}  {info.path}")
        return 1 if missing else 0
    for info in ensure_rootfs_many(wanted):
        click.echo(f"{info.version}  {info.nix_version}  {info.path}")
    return 0


@farm.command(context_settings={"ignore_unknown_options": True})
@_dir_option
@click.option("--nix", "version", type=_NIX_CHOICE, required=True, help="The client's Nix.")
@click.option("--daemon", is_flag=True, help="Run a nix-daemon for the command (build users).")
@click.option("--reset", is_flag=True, help="Empty the client's store first.")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Enter the root filesystem with pivot_root, not chroot, so that Nix may sandbox"
    " builds (needed to build in a chroot store such as --store /tmp/x).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def client(
    *,
    directory: Path | None,
    version: str,
    daemon: bool,
    reset: bool,
    sandbox: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a client of Nix --nix, chrooted in its root filesystem.

    The client has a store of its own (<farm>/clients/VERSION/nix) kept between calls, sees
    this machine's /tmp, /root, the farm, the nixdist checkout and the current directory, and
    has nixdist-hook on PATH. Use -- before COMMAND. The exit status is COMMAND's.
    """
    the_farm = _farm(directory)
    if reset:
        the_farm.reset_client(version)
    argv = the_farm.client_argv(version, command, daemon=daemon, sandbox=sandbox)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - replaced by the client, which keeps our stdio
