"""`nixdist machines [FILE] [--json]`: the build machines Nix would use, as nixdist reads them.

With FILE, that machines file is parsed. Without, the machines Nix itself would read:
``$NIX_REMOTE_SYSTEMS`` when set (each listed file), else the ``builders`` setting from the
configuration files (``$NIX_CONF_DIR/nix.conf``, the user's ``nix.conf``, ``$NIX_CONFIG``),
whose default is ``@/etc/nix/machines``. A ``-`` systems field means the ``system`` setting,
or this host's system when no file sets it.

Output: a table, or with ``--json`` a JSON list of objects with the keys ``uri, systems,
ssh_key, max_jobs, speed_factor, supported_features, mandatory_features, public_host_key``.
A malformed file is one line on stderr, ``nixdist: error: FILE:LINE: field N (name): ...``,
and exit status 1.

Files are read as bytes and decoded as UTF-8 with ``surrogateescape``, so any byte Nix would
accept is kept; the JSON output writes such bytes back unchanged, the table shows them as
U+FFFD.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Final

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from nixdist.model.machines import (
    machine_to_json,
    render_speed_factor,
)
from nixdist.state.config import nix_settings_here, nix_view, read_machines_file

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.machines import Machine

"""Larger configuration files are refused (an ``@/dev/zero`` include must not hang us)."""

_UNLIMITED_WIDTH: Final = 1_000_000


def effective_machines(env: Mapping[str, str], file: str | None) -> tuple[tuple[Machine, ...], str]:
    """The machines in `file`, or those Nix would use given the environment `env`.

    Also returns where they were read from, in words, for the table's title.
    """
    if file is not None:
        _, settings = nix_settings_here(env)
        return read_machines_file(file, default_system=settings.system), file
    view = nix_view(env)
    return view.machines, view.origin


def _display(text: str) -> Text:
    """Plain text for the table: no markup, undecodable bytes as U+FFFD."""
    return Text(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _table(found: tuple[Machine, ...]) -> Table:
    table = Table()
    for name in ("uri", "systems", "key", "jobs", "speed", "features", "mandatory", "host key"):
        numeric = name in {"jobs", "speed"}
        table.add_column(
            name,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=numeric or name == "host key",
        )
    for m in found:
        table.add_row(
            _display(m.uri),
            _display(",".join(m.systems)),
            _display(m.ssh_key or "-"),
            str(m.max_jobs),
            render_speed_factor(m.speed_factor),
            _display(",".join(sorted(m.supported_features)) or "-"),
            _display(",".join(sorted(m.mandatory_features)) or "-"),
            "yes" if m.public_host_key else "no",
        )
    return table


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def machines(file: str | None, as_json: bool) -> None:
    """List the build machines in FILE, or those Nix would use."""
    found, origin = effective_machines(os.environ, file)
    if as_json:
        text = json.dumps([machine_to_json(m) for m in found], ensure_ascii=False, indent=2)
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
        sys.stdout.buffer.flush()
        return
    table = _table(found)
    console = Console(highlight=False)
    title = f"{len(found)} build machine{'' if len(found) == 1 else 's'} ({origin})"
    console.print(_display(title), soft_wrap=True)
    if not console.is_terminal:  # a pipe or file: whole lines, no folding, for grep and diff
        unlimited = console.options.update_width(_UNLIMITED_WIDTH)
        console.width = max(console.width, Measurement.get(console, unlimited, table).maximum)
    console.print(table)
