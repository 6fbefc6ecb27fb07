"""`nixdist drv`: look at derivations with nixdist's own ATerm parser.

``nixdist drv show FILE.drv…`` prints the same JSON as Nix 2.8's
``nix --extra-experimental-features nix-command show-derivation FILE.drv…``: one object keyed
by derivation path. Files are read as bytes and decoded as UTF-8 with ``surrogateescape``, so
any byte in a value comes out as the same byte.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from nixdist.model.derivation import (
    Derivation,
    DerivationParseError,
    parse_derivation,
    render_show_json,
)


@click.group()
def drv() -> None:
    """Inspect derivations (.drv files)."""


@drv.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-r", "--recursive", is_flag=True, help="Also show every input derivation, recursively."
)
@click.option("--compact", is_flag=True, help="One line of JSON instead of indented JSON.")
def show(files: tuple[str, ...], recursive: bool, compact: bool) -> None:
    """Print derivations as JSON, like `nix show-derivation`."""
    result: dict[str, Any] = {}
    pending = [os.path.realpath(file) for file in files]
    while pending:
        path = pending.pop()
        if path in result:
            continue
        parsed = read_derivation(path)
        result.update(render_show_json(path, parsed))
        if recursive:
            pending.extend(parsed.input_drvs)
    text = json.dumps(
        dict(sorted(result.items())),
        ensure_ascii=False,
        indent=None if compact else 2,
        separators=(",", ":") if compact else None,
    )
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
    sys.stdout.buffer.flush()


def read_derivation(path: str) -> Derivation:
    """Read and parse one ``.drv`` file; errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise click.FileError(path, hint=err.strerror or str(err)) from None
    try:
        return parse_derivation(data.decode("utf-8", "surrogateescape"))
    except DerivationParseError as err:
        raise DerivationParseError(f"{path}: {err}") from None
