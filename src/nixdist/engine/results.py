"""The end of a run: the outputs asked for, brought here, rooted and printed like nix-build's.

Only the outputs asked for (or, with ``--fetch-all``, every output built) and their runtime
closure come into the local store: ordinary store additions through the local ``nix-store
--serve --write``, which check each NAR against its hash and register whole paths only, so
nothing partial is ever valid. Then each output gets its garbage-collector root, named as
``nix-build`` names them (``result``, ``result-dev``, ``result-2`` for the second
derivation…), made by the local Nix itself (``nix-store --add-root``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.engine.copies import bring
from nixdist.engine.nixcmd import run_nix
from nixdist.engine.places import HERE
from nixdist.errors import NixdistError
from nixdist.model.store_path import StorePath

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from nixdist.engine.places import Places
    from nixdist.engine.sessions import Sessions
    from nixdist.engine.targets import Target
    from nixdist.model.derivation import Derivation


def target_outputs(
    targets: Sequence[Target], drvs: Mapping[str, Derivation]
) -> list[tuple[Target, str, StorePath]]:
    """Each target's asked outputs (all, when it named none), in order, with their paths."""
    found: list[tuple[Target, str, StorePath]] = []
    for target in targets:
        outputs = drvs[target.drv_path].outputs
        names = target.outputs if target.outputs is not None else tuple(outputs)
        for name in names:
            if name not in outputs:
                raise NixdistError(f"derivation '{target.drv_path}' has no output '{name}'")
            if not outputs[name].path:
                raise NixdistError(
                    f"output '{name}' of '{target.drv_path}' has no path known in advance "
                    "(content-addressed derivations are not supported by nixdist build yet)"
                )
            found.append((target, name, StorePath.parse(outputs[name].path)))
    return found


def fetch_here(paths: Iterable[StorePath], *, places: Places, sessions: Sessions) -> int:
    """Make `paths` and their closure valid here; the NAR bytes that came in."""
    closure = places.closure(paths)
    session = sessions.take(HERE)
    try:
        brought = bring(closure, to=HERE, destination=session, places=places, sessions=sessions)
    except BaseException:
        sessions.discard(session)
        raise
    sessions.give_back(HERE, session)
    return brought.nar_bytes


def out_link_names(outputs: Sequence[tuple[Target, str, StorePath]], out_link: str) -> list[str]:
    """nix-build's names: one prefix per derivation (``result``, ``result-2``…), plus
    ``-<output>`` for every output but ``out``."""
    prefixes: dict[str, str] = {}
    names: list[str] = []
    for target, name, _ in outputs:
        prefix = prefixes.get(target.drv_path)
        if prefix is None:
            prefix = out_link if not prefixes else f"{out_link}-{len(prefixes) + 1}"
            prefixes[target.drv_path] = prefix
        names.append(prefix if name == "out" else f"{prefix}-{name}")
    return names


def add_roots(links: Sequence[tuple[str, StorePath]], environ: Mapping[str, str]) -> None:
    """Each (link, path) as an indirect GC root, by the local Nix."""
    for link, path in links:
        argv = ["nix-store", "--add-root", link, "--indirect", "--realise", str(path)]
        done = run_nix(argv, environ)
        if done.status != 0:
            why = done.error("nix-store --add-root")
            raise NixdistError(f"cannot make the root {link} for {path}: {why}")
