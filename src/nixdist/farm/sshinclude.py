"""An ``Include`` of the farm's ssh config at the top of a user's ``~/.ssh/config`` (opt-in).

With it, plain ``ssh nixdist-b1`` and a Nix run as that user (root's Nix reads root's
``~/.ssh/config``) reach the farm without ``NIX_SSHOPTS``. The line goes first, outside any
``Host`` block, preceded by a marker comment naming the farm's file, so adding is idempotent
and removing takes out exactly the two lines that were added::

    # nixdist farm include: /var/lib/nixdist/farm/ssh_config (remove: nixdist farm down …)
    Include /var/lib/nixdist/farm/ssh_config
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

_MARKER_PREFIX: Final = "# nixdist farm include: "


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def _marker(include: Path) -> str:
    return f"{_MARKER_PREFIX}{include} (remove: nixdist farm down --ssh-include)"


def _include_line(include: Path) -> str:
    return f"Include {include}"


def _write(config: Path, lines: list[str]) -> None:
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = config.stat().st_mode & 0o777 if config.exists() else 0o600
    tmp = config.with_name(config.name + ".nixdist-tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.chmod(mode)
    tmp.replace(config)


def _read(config: Path) -> list[str]:
    try:
        return config.read_text().splitlines()
    except FileNotFoundError:
        return []


def _without(lines: list[str], include: Path) -> list[str]:
    marker = _marker(include).partition(" (")[0]
    kept: list[str] = []
    skip_include = False
    for line in lines:
        if line.startswith(_MARKER_PREFIX) and line.partition(" (")[0] == marker:
            skip_include = True
            continue
        if skip_include and line.strip() == _include_line(include):
            skip_include = False
            continue
        skip_include = False
        kept.append(line)
    return kept


def has_ssh_include(include: Path, config: Path | None = None) -> bool:
    lines = _read(config or default_ssh_config())
    return _without(lines, include) != lines


def add_ssh_include(include: Path, config: Path | None = None) -> bool:
    """Put the marked ``Include <include>`` at the top of `config`; False if already there."""
    config = config or default_ssh_config()
    lines = _read(config)
    if lines[:2] == [_marker(include), _include_line(include)]:
        return False
    rest = _without(lines, include)
    _write(config, [_marker(include), _include_line(include), *rest])
    return True


def remove_ssh_include(include: Path, config: Path | None = None) -> bool:
    """Remove the marked include of `include` from `config`; False if it was not there."""
    config = config or default_ssh_config()
    lines = _read(config)
    rest = _without(lines, include)
    if rest == lines:
        return False
    if any(line.strip() for line in rest):
        _write(config, rest)
    else:
        config.unlink()  # nothing but our lines: an empty config is the same as none
    return True
