"""`nixdist build`: build derivations over the builders, scheduled by nixdist itself.

Takes what ``nix-build`` takes — files (default ``./default.nix``), ``-A ATTR``, ``--arg NAME
EXPR``, ``--argstr NAME VALUE``, ``-E EXPR``, ``-I PATH``, ``--option NAME VALUE``, ``.drv``
paths (``drv!out,dev`` too) — and flake installables (``.#hello``, when the installed Nix has
flakes); ``--machines FILE`` (default: the machines Nix would use), ``-j N`` (builds this host
may run itself when no builder can take one; default Nix's ``max-jobs``, 0: never),
``-o/--out-link``, ``--no-out-link``, ``-k/--keep-going``, ``--fetch-all`` (every built output
valid here too, as with the hook), ``--json``. It prints the output paths, as ``nix-build``
does, and exits with nix-build's statuses (100: a build failed, 101: a build timed out, 1:
anything else). See `nixdist.engine`.
"""

from __future__ import annotations

import json
import os

import click

from nixdist.engine.console import Console
from nixdist.engine.driver import BuildArgs, build
from nixdist.engine.targets import Expression, split_arguments
from nixdist.protocol.logjson import Verbosity


@click.command("build")
@click.argument("paths", nargs=-1)
@click.option("-A", "--attr", "attrs", multiple=True, help="Attribute to build.")
@click.option("--arg", "args", nargs=2, multiple=True, help="Argument NAME EXPR for the function.")
@click.option("--argstr", "argstrs", nargs=2, multiple=True, help="String argument NAME VALUE.")
@click.option("-E", "--expr", "is_expr", is_flag=True, help="The arguments are expressions.")
@click.option("-I", "include", multiple=True, help="Add a path to the Nix search path.")
@click.option("--option", "options", nargs=2, multiple=True, help="Nix setting NAME VALUE.")
@click.option("--machines", "machines_file", metavar="FILE", help="Machines file (default: Nix's).")
@click.option(
    "-j", "--max-jobs", "local_jobs", type=click.IntRange(min=0), help="Local build slots."
)
@click.option("-o", "--out-link", default="result", show_default=True, help="GC root name.")
@click.option("--no-out-link", is_flag=True, help="Make no GC root.")
@click.option("-k", "--keep-going", is_flag=True, help="Build what can be built after a failure.")
@click.option("--fetch-all", is_flag=True, help="Make every built output valid here too.")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as JSON.")
@click.option("-v", "--verbose", count=True, help="Say more (repeat for more).")
@click.option("-Q", "--quiet", is_flag=True, help="Say only errors.")
def build_command(  # noqa: PLR0917 - click passes one argument per option
    paths: tuple[str, ...],
    attrs: tuple[str, ...],
    args: tuple[tuple[str, str], ...],
    argstrs: tuple[tuple[str, str], ...],
    is_expr: bool,
    include: tuple[str, ...],
    options: tuple[tuple[str, str], ...],
    machines_file: str | None,
    local_jobs: int | None,
    out_link: str,
    no_out_link: bool,
    keep_going: bool,
    fetch_all: bool,
    as_json: bool,
    verbose: int,
    quiet: bool,
) -> int:
    """Build derivations, scheduling the whole graph over the builders."""
    targets, installables, rest = split_arguments(() if is_expr else paths)
    expression = None
    if is_expr or rest or not (targets or installables):
        expression = Expression(
            paths=paths if is_expr else tuple(rest),
            attrs=attrs,
            args=args,
            argstrs=argstrs,
            is_expr=is_expr,
            options=options,
            include=include,
        )
    verbosity = Verbosity.ERROR if quiet else Verbosity(min(Verbosity.INFO + verbose, 7))
    outcome = build(
        BuildArgs(
            targets=tuple(targets),
            installables=tuple(installables),
            expression=expression,
            machines_file=machines_file,
            local_jobs=local_jobs,
            out_link=None if no_out_link else out_link,
            keep_going=keep_going,
            fetch_all=fetch_all,
        ),
        os.environ,
        Console(verbosity=verbosity),
    )
    if as_json:
        click.echo(
            json.dumps(
                [{"drvPath": d, "output": o, "path": p} for d, o, p in outcome.outputs], indent=2
            )
        )
    else:
        for _, _, path in outcome.outputs:
            click.echo(path)
    return outcome.status
