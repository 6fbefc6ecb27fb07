"""`nixdist hook`: the build hook, for Nix versions whose ``build-hook`` setting takes a command
line (2.17+: ``build-hook = /usr/local/bin/nixdist hook``). Nix 2.8 takes a single path: use
``nixdist-hook`` there, which skips the CLI's start-up cost."""

from __future__ import annotations

import click

from nixdist.hook.main import main as hook_main


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(args: tuple[str, ...]) -> int:
    """Run as Nix's build hook (Nix passes the verbosity as the last argument)."""
    return hook_main(["nixdist hook", *args])
