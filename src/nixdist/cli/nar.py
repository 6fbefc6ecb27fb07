"""`nixdist nar`: NAR archives, byte-compatible with Nix's own tools.

* ``nixdist nar dump PATH``     = ``nix-store --dump PATH`` (the NAR on stdout, streamed)
* ``nixdist nar hash PATH``     = ``nix-hash --type sha256 --base32 PATH`` (SHA-256 of the NAR)
* ``nixdist nar restore DIR``   = ``nix-store --restore DIR`` (the NAR on stdin)
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Final

import click

from nixdist.model import nixbase32
from nixdist.store.narfs import dump_path, restore
from nixdist.wire.nar_reader import nar_size_and_hash

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

_STDIN_CHUNK: Final = 1 << 20


@contextlib.contextmanager
def _os_errors(action: str, path: str) -> Iterator[None]:
    """Turn an `OSError` into a one-line click error naming the file."""
    try:
        yield
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            raise
        message = f"{action} {path!r}: {err.strerror or err}"
        if err.filename is not None and os.fsdecode(err.filename) != path:
            message += f" ({os.fsdecode(err.filename)!r})"
        raise click.ClickException(message) from None


def _write_stdout(chunks: Iterable[bytes]) -> None:
    out = sys.stdout.buffer
    try:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
    except BrokenPipeError:
        # the reader went away: stop quietly, and keep Python from flushing into the pipe again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise


def _read_stdin() -> Iterator[bytes]:
    fd = sys.stdin.fileno()
    while chunk := os.read(fd, _STDIN_CHUNK):
        yield chunk


@click.group()
def nar() -> None:
    """Dump, hash and restore NAR archives (as nix-store --dump/--restore and nix-hash do)."""


@nar.command()
@click.argument("path", type=click.Path())
def dump(path: str) -> None:
    """Write the NAR serialisation of PATH to stdout (like `nix-store --dump PATH`)."""
    with _os_errors("cannot dump", path):
        _write_stdout(dump_path(path))


@nar.command("hash")
@click.argument("path", type=click.Path())
@click.option(
    "--format",
    "hash_format",
    type=click.Choice(["nix32", "base16", "sri"]),
    default="nix32",
    show_default=True,
    help="nix32 is what `nix-hash --type sha256 --base32` prints.",
)
def hash_(path: str, hash_format: str) -> None:
    """Print the SHA-256 hash of the NAR serialisation of PATH."""
    with _os_errors("cannot hash", path):
        _, value = nar_size_and_hash(dump_path(path))
    if hash_format == "nix32":
        click.echo(nixbase32.encode(value))
    elif hash_format == "base16":
        click.echo(value.hex())
    else:
        click.echo("sha256-" + base64.b64encode(value).decode())


@nar.command("restore")
@click.argument("target", type=click.Path())
def restore_(target: str) -> None:
    """Create TARGET (which must not exist) from the NAR on stdin (like `nix-store --restore`).

    On malformed input nothing is left at TARGET.
    """
    with _os_errors("cannot restore to", target):
        restore(_read_stdin(), target)
