"""The local Nix's commands, run the one way ``nixdist build`` runs them.

``nix-instantiate`` and ``nix path-info`` (what to build), ``nix-store --realise`` (a build
here), ``nix-store --add-root`` (the result links): each with the caller's environment, no
stdin, its stdout kept up to a limit, and what it said on stderr as the error's words.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import NixdistError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: The most of a command's stdout (a list of paths) and of its stderr that is kept.
MAX_OUTPUT: Final = 16 << 20
MAX_SAID: Final = 64 << 10


@dataclass(frozen=True, slots=True, kw_only=True)
class NixRun:
    status: int
    stdout: str
    said: str  # the end of its stderr, stripped

    def error(self, doing: str) -> str:
        """What to tell the user of a command that failed while `doing`."""
        return self.said or f"{doing}: exited with status {self.status}"


def run_nix(argv: Sequence[str], environ: Mapping[str, str]) -> NixRun:
    """Run `argv` to its end; `NixdistError` when it cannot be started at all."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(environ),
            check=False,
        )
    except OSError as err:
        raise NixdistError(f"cannot run {argv[0]}: {err}") from err
    return NixRun(
        status=done.returncode,
        stdout=done.stdout[:MAX_OUTPUT].decode(errors="replace"),
        said=done.stderr[-MAX_SAID:].decode(errors="replace").strip(),
    )
