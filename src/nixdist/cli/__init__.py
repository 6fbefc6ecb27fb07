"""The `nixdist` command. Each subcommand lives in its own module under `nixdist.cli`.

`main()` is the only place that maps exceptions to exit codes.
"""

from __future__ import annotations

import importlib
import sys

import click

from nixdist.errors import NixdistError

# subcommand name -> module defining a click command or group of that name
# (or "module:attribute" for another name of a command)
_SUBCOMMANDS = {
    "build": "nixdist.cli.build:build_command",
    "nar": "nixdist.cli.nar",
    "drv": "nixdist.cli.drv",
    "machines": "nixdist.cli.machines",
    "farm": "nixdist.cli.farm",
    "hook": "nixdist.cli.hook",
    "status": "nixdist.cli.status",
    "explain": "nixdist.cli.explain",
    "history": "nixdist.cli.history",
    "check": "nixdist.cli.check.command:check",
    "dashboard": "nixdist.cli.dashboard",
    "serve": "nixdist.cli.dashboard:dashboard",  # its first name, kept
    "setup": "nixdist.cli.setup",
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it is used, so `nixdist nar` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _SUBCOMMANDS.get(cmd_name)
        if module_name is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = module_name.partition(":")
        name = attribute or cmd_name.replace("-", "_")
        command = getattr(importlib.import_module(module_name), name)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{cmd_name} is not a click command")
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="nixdist")
def cli() -> None:
    """Distributed Nix builds over SSH."""


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="nixdist", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except NixdistError as err:
        click.echo(f"nixdist: error: {err}", err=True)
        return 1
    except BrokenPipeError:
        return 141
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
