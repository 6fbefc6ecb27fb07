"""Planning copies between stores: which paths, in which order. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.errors import RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.path_info import PathInfo
    from nixdist.model.store_path import StorePath


def dependency_order(infos: Mapping[StorePath, PathInfo]) -> list[PathInfo]:
    """The paths of `infos`, each after every one of its references that is also in `infos`.

    References outside `infos` (already valid at the destination) and self-references are
    ignored; ties are broken by Nix's order (basename), so the result is deterministic. A
    reference cycle, which Nix cannot produce, is an error.
    """
    ordered: list[PathInfo] = []
    state: dict[StorePath, bool] = {}  # False: on the current walk, True: placed

    def visit(path: StorePath) -> None:
        # Iterative depth-first walk: closures can be deep (long chains of references).
        stack: list[tuple[StorePath, list[StorePath]]] = [(path, _deps(infos, path))]
        state[path] = False
        while stack:
            node, deps = stack[-1]
            if deps:
                dep = deps.pop()
                seen = state.get(dep)
                if seen is None:
                    state[dep] = False
                    stack.append((dep, _deps(infos, dep)))
                elif seen is False:
                    raise RemoteProtocolError(f"reference cycle between {node} and {dep}")
                continue
            stack.pop()
            state[node] = True
            ordered.append(infos[node])

    for path in sorted(infos):
        if path not in state:
            visit(path)
    return ordered


def _deps(infos: Mapping[StorePath, PathInfo], path: StorePath) -> list[StorePath]:
    refs = [ref for ref in infos[path].references if ref != path and ref in infos]
    return sorted(refs, reverse=True)  # popped from the end: visited in basename order
