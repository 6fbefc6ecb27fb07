"""Include files in configuration text (machines ``@file``, nix.conf ``include``): the guards.

Nix follows includes without a guard (a cycle crashes it); we stop at a cycle and at
`MAX_INCLUDE_DEPTH` nested includes, with an error naming the file and line of the include.
"""

from __future__ import annotations

from typing import Final

from nixdist.errors import ConfigError

MAX_INCLUDE_DEPTH: Final = 32
_SHOWN_VALUE_MAX: Final = 60


def show_value(value: str) -> str:
    """A value for an error message: quoted, escaped (so one line), and not too long."""
    if len(value) > _SHOWN_VALUE_MAX:
        return repr(value[:_SHOWN_VALUE_MAX]) + "..."
    return repr(value)


def check_include(path: str, stack: tuple[str, ...], *, source: str, line: int) -> None:
    """Refuse to include `path` from `source`:`line` when `stack` (the files being read,
    outermost first) already holds it, or is already `MAX_INCLUDE_DEPTH` deep."""
    if path in stack:
        chain = " -> ".join(show_value(p) for p in (*stack[stack.index(path) :], path))
        raise ConfigError(f"include cycle: {chain}", file=source, line=line)
    if len(stack) > MAX_INCLUDE_DEPTH:
        raise ConfigError(
            f"includes nested more than {MAX_INCLUDE_DEPTH} deep at {show_value(path)}",
            file=source,
            line=line,
        )
