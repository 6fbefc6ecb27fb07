"""How the farm's users — tests, `make bench`, `make demo` — ask Nix for a build: one
``nix-build`` command line and one way of making every run's derivations new."""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

_salts = itertools.count()


def fresh_salt(tag: str) -> str:
    """A salt no earlier run used, so that every derivation of a run really builds."""
    return f"{tag}-{os.getpid()}-{time.time_ns()}-{next(_salts)}"


def nix_build_argv(
    args: Sequence[str],
    *,
    builders: str,
    hook: Path | str | None,
    jobs: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """``nix-build <args>`` with no substituters and no out-link, `jobs` local jobs (0: every
    build goes to `builders`, the ``builders`` setting: ``@FILE`` or lines), through `hook`
    (the ``build-hook`` setting: a path, or for Nix 2.17+ a command line; None: Nix's own)."""
    argv = [
        "nix-build",
        *args,
        "--no-out-link",
        "-j",
        str(jobs),
        "--option",
        "substituters",
        "",
        "--builders",
        builders,
    ]
    if hook is not None:
        argv += ["--option", "build-hook", str(hook)]
    return [*argv, *extra]
