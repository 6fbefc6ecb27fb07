"""Reading configuration from disk: machines files (with their ``@file`` includes).

The parsers are pure (`nixdist.model.machines`); this module gives them the file system.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.errors import ConfigError
from nixdist.model.machines import machines_from_env_and_setting, parse_machines

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.machines import Machine


def read_text_file(path: str) -> str | None:
    """A configuration file's text; None if it does not exist (Nix treats that as empty)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:  # noqa: PTH123 - str paths from config text
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", file=path) from err


def load_machines(
    builders: str, environ: Mapping[str, str], *, default_system: str
) -> tuple[Machine, ...]:
    """The machines Nix would use: ``NIX_REMOTE_SYSTEMS`` if set, else the `builders` value."""
    text = machines_from_env_and_setting(builders, environ.get("NIX_REMOTE_SYSTEMS"))
    return parse_machines(
        text, source="builders", read_file=read_text_file, default_system=default_system
    )
