"""Reading configuration from disk: this host's Nix settings and machines files (with their
``@file`` includes).

The parsers are pure (`nixdist.model.machines`, `nixdist.model.nixconf`); this module gives
them the file system. `nix_view` is the one reader of what this host's Nix would use (its
``nix.conf``, then ``NIX_REMOTE_SYSTEMS`` or ``builders``), for every command that shows or
checks it; the hook reads the machines Nix sends it (`load_machines`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.model.machines import machines_from_env_and_setting, parse_machines
from nixdist.model.nixconf import DEFAULT_CONF_DIR, load_nix_conf, nix_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.machines import Machine
    from nixdist.model.nixconf import NixConf, NixSettings


_MACHINE_NAMES: Final = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686"}


def host_system() -> str:
    """This host's Nix system name (``x86_64-linux``), as Nix's compiled-in default."""
    machine = os.uname().machine.lower()
    machine = _MACHINE_NAMES.get(machine, machine)
    kernel = "darwin" if sys.platform == "darwin" else sys.platform.rstrip("0123456789")
    return f"{machine}-{kernel}"


def effective_build_hook(environ: Mapping[str, str]) -> str | None:
    """The build hook the local Nix says it uses (``nix config show``, ``show-config`` before
    2.20), words joined by spaces; None when Nix cannot be asked."""
    import json  # noqa: PLC0415 - the hook imports this module and never calls this
    import subprocess  # noqa: PLC0415

    for words in (["config", "show"], ["show-config"]):
        argv = ["nix", "--extra-experimental-features", "nix-command", *words, "--json"]
        try:
            done = subprocess.run(
                argv, env=dict(environ), capture_output=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            continue
        try:
            value = json.loads(done.stdout)["build-hook"]["value"]
        except (ValueError, KeyError, TypeError):
            return None
        if isinstance(value, list):
            return " ".join(map(str, value))
        return str(value)
    return None


#: Larger "configuration" is a mistake (``@/dev/zero``), not a file to read to the end.
MAX_FILE_SIZE: Final = 16 * 1024 * 1024


def read_config_file(path: str) -> str | None:
    """A configuration file's text; None if it does not exist (Nix treats that as empty).

    Any other failure is a one-line `ConfigError` naming the file. This is the reader that
    `nixdist.model.machines.parse_machines` and `nixdist.model.nixconf` take.
    """
    try:
        with open(path, "rb") as file:  # noqa: PTH123 - a str path from a config file
            data = file.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}", file=path) from None
    except ValueError as err:  # an embedded NUL byte in the path
        raise ConfigError(f"cannot read: {err}", file=path) from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"larger than {MAX_FILE_SIZE} bytes", file=path)
    return data.decode("utf-8", "surrogateescape")


def load_machines(
    builders: str, environ: Mapping[str, str], *, default_system: str
) -> tuple[Machine, ...]:
    """The machines Nix would use: ``NIX_REMOTE_SYSTEMS`` if set, else the `builders` value."""
    text = machines_from_env_and_setting(builders, environ.get("NIX_REMOTE_SYSTEMS"))
    return parse_machines(
        text, source="<builders>", read_file=read_config_file, default_system=default_system
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NixView:
    """Nix's settings on this host, and the machines it would use."""

    conf: NixConf
    settings: NixSettings
    machines: tuple[Machine, ...]
    origin: str  # where the machines come from, in words

    @property
    def system(self) -> str:
        return self.settings.system


def nix_settings_here(environ: Mapping[str, str]) -> tuple[NixConf, NixSettings]:
    """This host's ``nix.conf`` and the settings it gives (without reading the machines)."""
    conf = load_nix_conf(environ, read_file=read_config_file)
    conf_dir = os.path.normpath(environ.get("NIX_CONF_DIR") or DEFAULT_CONF_DIR)
    settings = nix_settings(
        conf, default_system=host_system(), conf_dir=conf_dir, cpu_count=os.cpu_count() or 1
    )
    return conf, settings


def nix_view(environ: Mapping[str, str]) -> NixView:
    """Nix's configuration, and its machines (``NIX_REMOTE_SYSTEMS``, else ``builders``) as
    Nix would read them. `ConfigError` (naming the file, line and field) when they cannot be."""
    conf, settings = nix_settings_here(environ)
    remote_systems = environ.get("NIX_REMOTE_SYSTEMS")
    text = machines_from_env_and_setting(settings.builders, remote_systems)
    if remote_systems is None:
        source, origin = "<builders>", f"builders = {settings.builders}"
    else:
        source, origin = "<NIX_REMOTE_SYSTEMS>", f"NIX_REMOTE_SYSTEMS={remote_systems}"
    machines = parse_machines(
        text, source=source, read_file=read_config_file, default_system=settings.system
    )
    return NixView(conf=conf, settings=settings, machines=machines, origin=origin)


def read_machines_file(path: str, *, default_system: str) -> tuple[Machine, ...]:
    """The machines of the machines file `path` (a `ConfigError` when there is none)."""
    text = read_config_file(path)
    if text is None:
        raise ConfigError("no such file", file=path)
    return parse_machines(
        text, source=path, read_file=read_config_file, default_system=default_system
    )
