"""What ``nixdist build`` is asked to build, and the derivations behind it.

The arguments are the ones people type for ``nix-build``: files or expressions are given to
``nix-instantiate`` (of the Nix on ``PATH``, so any version from 2.8 on), which prints one
``.drv`` path per line, with ``!output`` when an attribute named one output; ``.drv`` paths
(``drv!out,dev`` too) are taken as they are; flake installables (``.#hello``) are evaluated
by ``nix path-info --derivation`` with flakes enabled for that command. The ``.drv`` closure
is then read with our own parser at each file's real place in the local store (a chroot store
too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nixdist.engine.nixcmd import run_nix
from nixdist.errors import ConfigError, NixdistError, ParseError
from nixdist.model.derivation import parse_derivation
from nixdist.model.store_path import StorePath

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from nixdist.model.derivation import Derivation
    from nixdist.model.local_store import LocalStore


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One derivation asked for, and which of its outputs (None: all of them)."""

    drv_path: str
    outputs: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``/nix/store/…drv`` or ``/nix/store/…drv!out,dev``."""
        path, bang, names = text.strip().partition("!")
        if not path.endswith(".drv"):
            raise ConfigError(f"not a derivation: {text!r}")
        try:
            StorePath.parse(path)
        except ParseError as err:
            raise ConfigError(f"not a derivation in the store: {text!r} ({err})") from err
        if not bang:
            return cls(drv_path=path)
        outputs = tuple(n for n in names.split(",") if n)
        return cls(drv_path=path, outputs=outputs or None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expression:
    """What ``nix-build`` takes: files (or ``-E`` expressions) and the options that shape them."""

    paths: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    args: tuple[tuple[str, str], ...] = ()  # --arg NAME EXPR
    argstrs: tuple[tuple[str, str], ...] = ()  # --argstr NAME VALUE
    is_expr: bool = False
    options: tuple[tuple[str, str], ...] = ()  # --option NAME VALUE
    include: tuple[str, ...] = ()  # -I

    def instantiate_argv(self) -> list[str]:
        argv = ["nix-instantiate"]
        if self.is_expr:
            argv.append("-E")
        for attr in self.attrs:
            argv += ["-A", attr]
        for name, value in self.args:
            argv += ["--arg", name, value]
        for name, value in self.argstrs:
            argv += ["--argstr", name, value]
        for name, value in self.options:
            argv += ["--option", name, value]
        for path in self.include:
            argv += ["-I", path]
        argv += list(self.paths) if self.paths or self.is_expr else ["./default.nix"]
        return argv


def is_installable(word: str) -> bool:
    """Whether `word` is a flake installable (``.#hello``, ``nixpkgs#hello``)."""
    return "#" in word


def split_arguments(words: Sequence[str]) -> tuple[list[Target], list[str], list[str]]:
    """The ``.drv`` paths among `words`, the flake installables, and the rest (files, or
    expressions with ``-E``)."""
    targets: list[Target] = []
    installables: list[str] = []
    rest: list[str] = []
    for word in words:
        if word.partition("!")[0].endswith(".drv"):
            targets.append(Target.parse(word))
        elif is_installable(word):
            installables.append(word)
        else:
            rest.append(word)
    return targets, installables, rest


def evaluate_installables(installables: Sequence[str], environ: Mapping[str, str]) -> list[Target]:
    """The derivations of flake installables, as the installed Nix evaluates them
    (``nix path-info --derivation``, flakes enabled for this command only)."""
    argv = ["nix", "--extra-experimental-features", "nix-command flakes", "path-info"]
    return _drv_paths([*argv, "--derivation", *installables], environ)


def instantiate(expression: Expression, environ: Mapping[str, str]) -> list[Target]:
    """Evaluate `expression` with ``nix-instantiate``; its error as Nix says it otherwise."""
    return _drv_paths(expression.instantiate_argv(), environ)


def _drv_paths(argv: Sequence[str], environ: Mapping[str, str]) -> list[Target]:
    """The .drv paths (one per line) a Nix command prints; its error as Nix says it."""
    done = run_nix(argv, environ)
    if done.status != 0:
        raise NixdistError(done.error(argv[0]))
    return [Target.parse(line) for line in done.stdout.splitlines() if line.strip()]


def read_closure(store: LocalStore, roots: Iterable[str]) -> dict[str, Derivation]:
    """Every derivation `roots` need (through their input derivations), read and parsed."""
    found: dict[str, Derivation] = {}
    todo = list(dict.fromkeys(roots))
    while todo:
        drv_path = todo.pop()
        if drv_path in found:
            continue
        real = store.real_path(StorePath.parse(drv_path))
        try:
            text = Path(real).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            raise NixdistError(f"cannot read the derivation {drv_path}: {err}") from err
        try:
            drv = parse_derivation(text)
        except ParseError as err:
            raise NixdistError(f"{drv_path}: {err}") from err
        found[drv_path] = drv
        todo.extend(p for p in drv.input_drvs if p not in found)
    return found
