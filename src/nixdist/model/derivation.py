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
written raw. Nix's reader also takes a backslash before any other character as that character;
Nix never writes one, and we refuse it, so that every text we accept round-trips.

Paths inside a derivation are kept as `str`, not `StorePath`: a derivation may come from a
store with another store dir, and keeping the text means every file round-trips byte for byte
(``render_derivation(parse_derivation(t)) == t``). The parser requires the sorted, duplicate-free
order Nix writes (bytewise, i.e. UTF-8 order) so that this holds; anything else, including the
experimental ``DrvWithVersion(`` header, unknown hash algorithms (``text:``, ``git:``) and
trailing data, is a `DerivationParseError` naming the offset and what was expected.

Nix prints output names, paths, hash fields, input-derivation output names, inputSrcs and the
platform *without* escaping; `render_derivation` does the same, and the parser refuses a
backslash in those fields (Nix never writes one there that it could read back). Only env,
builder and args are escaped.

The grammar has a fixed depth (nothing nests), so the only guard needed against absurd input
is `MAX_DRV_SIZE`; parsing is linear in the text length. Files are `str`: decode their bytes
as UTF-8 with ``surrogateescape`` (as the wire layer does) and any byte round-trips.

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
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar, assert_never

from nixdist.errors import ParseError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.store_path import STORE_DIR, StorePath, StorePathError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

_T = TypeVar("_T")

MAX_DRV_SIZE: Final = 256 << 20
"""Longest ``.drv`` text `parse_derivation` accepts (characters)."""


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
        if not self.hash_algo:
            return OutputKind.INPUT_ADDRESSED if self.path else OutputKind.DEFERRED
        if not self.hash:
            return OutputKind.FLOATING
        return OutputKind.IMPURE if self.hash == "impure" else OutputKind.FIXED

    @property
    def is_recursive(self) -> bool:
        """Whether a content-addressed output is hashed as a NAR (``r:``) or flat."""
        return self.hash_algo.startswith("r:")

    def fixed_hash(self) -> Hash:
        """The expected hash of a fixed output (any unprefixed encoding, as Nix accepts)."""
        if self.kind is not OutputKind.FIXED:
            raise ValueError(f"a {self.kind.value} output has no fixed hash")
        if ":" in self.hash or "-" in self.hash:
            raise ParseError(f"fixed-output hash {self.hash!r} must be a bare digest")
        return Hash.parse(self.hash, HashAlgo(self.hash_algo.removeprefix("r:")))


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

    @property
    def is_fixed_output(self) -> bool:
        return all(o.kind is OutputKind.FIXED for o in self.outputs.values())


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


def parse_derivation(text: str, *, store_dir: str = STORE_DIR) -> Derivation:
    """Parse the text of a ``.drv`` file (a `str`; decode bytes as UTF-8, surrogateescape).

    Every path must be a valid store path in `store_dir`. Raises `DerivationParseError`.
    """
    if len(text) > MAX_DRV_SIZE:
        raise DerivationParseError(
            f"derivation of {len(text)} characters is larger than {MAX_DRV_SIZE}"
        )
    return _Parser(text, store_dir).derivation()


def render_derivation(drv: Derivation) -> str:
    """The ATerm text of `drv`, exactly as Nix 2.8 writes it.

    Nix writes some fields without escaping (output names, paths, hash fields, input drv
    output names, inputSrcs and platform); if one of them contains ``"`` or ``\\`` the result
    could not be read back, so that is a `ValueError`.
    """
    out: list[str] = ["Derive(["]
    out.append(
        ",".join(
            f"({_raw(name)},{_raw(o.path)},{_raw(o.hash_algo)},{_raw(o.hash)})"
            for name, o in drv.outputs.items()
        )
    )
    out.append("],[")
    out.append(
        ",".join(
            f"({_raw(path)},[{','.join(map(_raw, names))}])"
            for path, names in drv.input_drvs.items()
        )
    )
    out.append("],[")
    out.append(",".join(map(_raw, drv.input_srcs)))
    out.append(f"],{_raw(drv.platform)},{_quote(drv.builder)},[")
    out.append(",".join(map(_quote, drv.args)))
    out.append("],[")
    out.append(",".join(f"({_quote(k)},{_quote(v)})" for k, v in drv.env.items()))
    out.append("])")
    return "".join(out)


def to_basic(drv: Derivation, drv_path: str, inputs: Iterable[str] | None) -> BasicDerivation:
    """The BasicDerivation that serve cmd 8 sends for `drv` (nix-protocols.md §1.9 step 8).

    inputDrvs are dropped. If the derivation has input derivations, its inputSrcs are
    replaced by `inputs` — the full input closure Nix sends after ``# accept`` — sorted and
    deduplicated; otherwise inputSrcs stay as they are (changing them would change
    content-addressed output ids) and `inputs` is ignored.
    """
    name = StorePath.from_basename(drv_path.rpartition("/")[2]).drv_name
    input_srcs = drv.input_srcs
    if drv.input_drvs:
        if inputs is None:
            raise ValueError(f"{drv_path} has input derivations: the input paths are needed")
        input_srcs = tuple(sorted(set(inputs), key=_path_key))
    return BasicDerivation(
        name=name,
        outputs=drv.outputs,
        input_srcs=input_srcs,
        platform=drv.platform,
        builder=drv.builder,
        args=drv.args,
        env=drv.env,
    )


JsonValue = str | bool | list[str] | dict[str, Any]


def render_show_json(drv_path: str, drv: Derivation) -> dict[str, dict[str, JsonValue]]:
    """The JSON value ``nix show-derivation`` (Nix 2.8) prints for one derivation.

    ``{drv_path: {outputs, inputSrcs, inputDrvs, system, builder, args, env}}``; an output
    object has ``path`` when known, ``hashAlgo`` for content-addressed outputs, ``hash``
    (base16) for fixed ones and ``impure: true`` for impure ones.
    """
    outputs: dict[str, dict[str, str | bool]] = {}
    for name, output in drv.outputs.items():
        entry: dict[str, str | bool] = {}
        if output.path:
            entry["path"] = output.path
        if output.hash_algo:
            entry["hashAlgo"] = output.hash_algo
        match output.kind:
            case OutputKind.FIXED:
                entry["hash"] = output.fixed_hash().to_base16()
            case OutputKind.IMPURE:
                entry["impure"] = True
            case OutputKind.INPUT_ADDRESSED | OutputKind.FLOATING | OutputKind.DEFERRED:
                pass
            case _ as unreachable:
                assert_never(unreachable)
        outputs[name] = entry
    return {
        drv_path: {
            "outputs": outputs,
            "inputSrcs": list(drv.input_srcs),
            "inputDrvs": {path: list(names) for path, names in drv.input_drvs.items()},
            "system": drv.platform,
            "builder": drv.builder,
            "args": list(drv.args),
            "env": dict(drv.env),
        }
    }


def required_system_features(drv: Derivation | BasicDerivation) -> frozenset[str]:
    """The features a builder needs, as Nix 2.8 sends them in the hook's ``try`` request.

    ``requiredSystemFeatures`` from the env (split on whitespace) or, with structured attrs,
    the JSON list; plus ``ca-derivations`` when an output path is not known in advance.
    """
    attrs = structured_attrs(drv)
    features: set[str] = set()
    if attrs is None:
        features.update(drv.env.get("requiredSystemFeatures", "").split())
    else:
        value = attrs.get("requiredSystemFeatures", [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DerivationParseError("requiredSystemFeatures must be a list of strings")
        features.update(value)
    if any(not output.path for output in drv.outputs.values()):
        features.add("ca-derivations")
    return frozenset(features)


def structured_attrs(drv: Derivation | BasicDerivation) -> dict[str, Any] | None:
    """The parsed ``__json`` env value of a ``__structuredAttrs`` derivation, else None."""
    text = drv.env.get("__json")
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise DerivationParseError(f"invalid __json attribute: {err}") from None
    if not isinstance(value, dict):
        raise DerivationParseError("the __json attribute is not a JSON object")
    return value


# --- rendering helpers ---

#: Characters Nix never writes raw in an escaped string (a backslash starts an escape).
_NOT_RAW: Final = frozenset("\\\n\r\t")
_ESCAPES: Final = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _quote(value: str) -> str:
    return f'"{value.translate(_ESCAPES)}"'


def _raw(value: str) -> str:
    if '"' in value or "\\" in value:
        raise ValueError(
            f"{value!r}: Nix writes this field unescaped, so it cannot hold '\"' or '\\'"
        )
    return f'"{value}"'


def _byte_key(value: str) -> bytes:
    """Sort key equal to Nix's bytewise std::string order."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _path_key(path: str) -> str:
    """Nix orders store path sets by basename."""
    return path.rpartition("/")[2]


# --- the parser ---

_HASH_ALGOS: Final = frozenset(a.value for a in HashAlgo)


class _Parser:
    """A cursor over the text; every method consumes one grammar element or raises."""

    def __init__(self, text: str, store_dir: str) -> None:
        self.text = text
        self.pos = 0
        self.store_dir = store_dir

    def fail(self, expected: str, at: int | None = None) -> NoReturn:
        at = self.pos if at is None else at
        found = self.text[at : at + 20]
        shown = repr(found) + ("…" if at + 20 < len(self.text) else "") if found else "end of text"
        raise DerivationParseError(f"offset {at}: expected {expected}, found {shown}")

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            self.fail(repr(token))
        self.pos += len(token)

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def string(self, *, raw: bool = False) -> str:
        """A quoted string; `raw` fields are written unescaped by Nix, so escapes are errors."""
        self.expect('"')
        start = self.pos
        end = _closing_quote(self.text, start)
        if end < 0:
            self.fail("'\"' closing the string", len(self.text))
        body = self.text[start:end]
        if raw:
            if "\\" in body:
                self.fail("no backslash in a field Nix writes unescaped", start)
        elif not _NOT_RAW.isdisjoint(body):
            decoded = _unescape(body)
            if decoded.translate(_ESCAPES) != body:
                # Nix's reader takes a raw newline or any backslash pair, but Nix writes only
                # its five escapes: other text could not round-trip, so Nix did not write it.
                self.fail('only the escapes Nix writes (\\" \\\\ \\n \\r \\t)', start)
            body = decoded
        self.pos = end + 1
        return body

    def items(self, element: Callable[[], _T]) -> list[_T]:
        """``[e,e,…]`` (the opening bracket already consumed) up to and including ``]``."""
        result: list[_T] = []
        if self.peek("]"):
            self.pos += 1
            return result
        while True:
            result.append(element())
            if self.peek(","):
                self.pos += 1
            elif self.peek("]"):
                self.pos += 1
                return result
            else:
                self.fail("',' or ']'")

    def store_path(self, *, drv: bool = False) -> str:
        start = self.pos
        path = self.string(raw=True)
        self.check_store_path(path, start, drv=drv)
        return path

    def check_store_path(self, path: str, at: int, *, drv: bool = False) -> None:
        try:
            parsed = StorePath.parse(path, self.store_dir)
        except StorePathError as err:
            raise DerivationParseError(f"offset {at}: {err}") from None
        if drv and not parsed.is_derivation:
            self.fail("a .drv path", at)

    def output(self) -> tuple[str, DerivationOutput]:
        self.expect("(")
        name_at = self.pos
        name = self.string(raw=True)
        if not name:
            self.fail("an output name", name_at)
        self.expect(",")
        path_at = self.pos
        path = self.string(raw=True)
        self.expect(",")
        algo_at = self.pos
        hash_algo = self.string(raw=True)
        self.expect(",")
        hash_at = self.pos
        hash_ = self.string(raw=True)
        self.expect(")")
        output = DerivationOutput(path=path, hash_algo=hash_algo, hash=hash_)
        if hash_algo and hash_algo.removeprefix("r:") not in _HASH_ALGOS:
            self.fail("a hash algorithm (md5, sha1, sha256, sha512, optionally 'r:')", algo_at)
        if not hash_algo and hash_:
            self.fail("an empty hash for an output without a hash algorithm", hash_at)
        kind = output.kind
        if kind in {OutputKind.INPUT_ADDRESSED, OutputKind.FIXED}:
            self.check_store_path(path, path_at)
        elif path:
            self.fail(f"an empty path for a {kind.value} output", path_at)
        if kind is OutputKind.FIXED:
            try:
                output.fixed_hash()
            except ParseError as err:
                raise DerivationParseError(f"offset {hash_at}: {err}") from None
        return name, output

    def input_drv(self) -> tuple[str, tuple[str, ...]]:
        self.expect("(")
        path = self.store_path(drv=True)
        self.expect(",[")
        start = self.pos
        names = self.items(lambda: self.string(raw=True))
        self.check_sorted(names, start, "output names")
        self.expect(")")
        return path, tuple(names)

    def env_pair(self) -> tuple[str, str]:
        self.expect("(")
        key = self.string()
        self.expect(",")
        value = self.string()
        self.expect(")")
        return key, value

    def check_sorted(
        self, keys: Sequence[str], at: int, what: str, key: Callable[[str], bytes] = _byte_key
    ) -> None:
        for previous, current in itertools.pairwise(keys):
            if key(previous) >= key(current):
                raise DerivationParseError(
                    f"offset {at}: {what} are not strictly sorted: {previous!r} before {current!r}"
                )

    def derivation(self) -> Derivation:
        if self.peek("DrvWithVersion("):
            self.fail("'Derive(' (DrvWithVersion is an experimental format Nix 2.8 cannot read)")
        self.expect("Derive([")
        at = self.pos
        outputs = self.items(self.output)
        if not outputs:
            self.fail("at least one output", at)
        self.check_sorted([name for name, _ in outputs], at, "outputs")
        self.expect(",[")
        at = self.pos
        input_drvs = self.items(self.input_drv)
        self.check_sorted([path for path, _ in input_drvs], at, "input derivations")
        self.expect(",[")
        at = self.pos
        input_srcs = self.items(self.store_path)
        self.check_sorted(input_srcs, at, "input sources")
        self.expect(",")
        platform = self.string(raw=True)
        self.expect(",")
        builder = self.string()
        self.expect(",[")
        args = self.items(self.string)
        self.expect(",[")
        at = self.pos
        env = self.items(self.env_pair)
        self.check_sorted([key for key, _ in env], at, "environment variables")
        self.expect(")")
        if self.pos != len(self.text):
            self.fail("end of text after the derivation")
        return Derivation(
            outputs=dict(outputs),
            input_drvs=dict(input_drvs),
            input_srcs=tuple(input_srcs),
            platform=platform,
            builder=builder,
            args=tuple(args),
            env=dict(env),
        )


def _closing_quote(text: str, start: int) -> int:
    """Index of the ``"`` ending the string whose body starts at `start`, or -1.

    A quote ends the string when an even number of backslashes precedes it.
    """
    pos = start
    while True:
        quote = text.find('"', pos)
        if quote < 0:
            return -1
        before = quote
        while before > start and text[before - 1] == "\\":
            before -= 1
        if (quote - before) % 2 == 0:
            return quote
        pos = quote + 1


def _unescape(body: str) -> str:
    """Decode ``\\n``, ``\\r``, ``\\t``; a backslash before any other character is that character.

    Splitting on escaped backslashes first leaves pieces in which every backslash is followed
    by the character it escapes, which is never a backslash; str methods then do the rest.
    """
    return "\\".join(
        piece.replace("\\n", "\n").replace("\\r", "\r").replace("\\t", "\t").replace("\\", "")
        for piece in body.split("\\\\")
    )
