"""Derivations: the ``.drv`` ATerm format, `BasicDerivation`, and ``nix show-derivation`` JSON.

A ``.drv`` file (Nix 2.8 ``derivations.cc``; nix-protocols.md §5) is one line, no trailing
newline::

    Derive([("out","/nix/store/…-x","",""),…],     outputs (name, path, hashAlgo, hash), by name
           [("/nix/store/…-y.drv",["out"]),…],       inputDrvs: drv path -> output names, by path
           ["/nix/store/…-src",…],                   inputSrcs, sorted
           "x86_64-linux",                           platform (the `system`)
           "/bin/sh",                                builder
           ["-c","…"],                               args, in order
           [("builder","/bin/sh"),…])                env, by name

(without the whitespace). Strings are double-quoted; on output ``"``, ``\\``, newline, CR and
tab are escaped as ``\\"``, ``\\\\``, ``\\n``, ``\\r``, ``\\t`` and every other character is
written raw; on input ``\\n``, ``\\r``, ``\\t`` are decoded and a backslash before any other
character stands for that character.

Paths inside a derivation are kept as `str`, not `StorePath`: a derivation may come from a
store with another store dir, and keeping the text means every file round-trips byte for byte
(``render_derivation(parse_derivation(t)) == t``). The parser requires the sorted, duplicate-free
order Nix writes (bytewise, i.e. UTF-8 order) so that this holds; anything else, including the
experimental ``DrvWithVersion(`` header, is a `DerivationParseError` with the offset.

Output kinds (§3.6), by which of ``(path, hash_algo, hash)`` are set:

================  ===========  ==============  =========
kind              path         hash_algo       hash
================  ===========  ==============  =========
input-addressed   full path    ``""``          ``""``
fixed-output      full path    ``r:sha256``    base16
floating CA       ``""``       ``r:sha256``    ``""``
deferred          ``""``       ``""``          ``""``
impure            ``""``       ``r:sha256``    ``impure``
================  ===========  ==============  =========
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixdist.errors import ParseError

if TYPE_CHECKING:
    from collections.abc import Mapping


class DerivationParseError(ParseError):
    """A ``.drv`` text that is not a derivation Nix 2.8 would write."""


class OutputKind(enum.Enum):
    INPUT_ADDRESSED = "input-addressed"
    FIXED = "fixed"
    FLOATING = "floating"
    DEFERRED = "deferred"
    IMPURE = "impure"


@dataclass(frozen=True, slots=True, kw_only=True)
class DerivationOutput:
    """One output tuple; see the table in the module docstring."""

    path: str
    hash_algo: str = ""
    hash: str = ""

    @property
    def kind(self) -> OutputKind:
        if self.path:
            return OutputKind.FIXED if self.hash_algo else OutputKind.INPUT_ADDRESSED
        if not self.hash_algo:
            return OutputKind.DEFERRED
        return OutputKind.IMPURE if self.hash == "impure" else OutputKind.FLOATING


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivation:
    """A parsed ``.drv``. Mappings keep the file's (sorted) order; not hashable."""

    outputs: Mapping[str, DerivationOutput]
    input_drvs: Mapping[str, tuple[str, ...]]
    input_srcs: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicDerivation:
    """What serve cmd 8 (BuildDerivation) carries: a derivation without inputDrvs.

    `name` is the derivation's name (drv path basename minus hash and ``.drv``).
    """

    name: str
    outputs: Mapping[str, DerivationOutput]
    input_srcs: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: Mapping[str, str]


def parse_derivation(text: str) -> Derivation:
    raise NotImplementedError


def render_derivation(drv: Derivation) -> str:
    raise NotImplementedError
