"""Build machines, as listed in Nix's machines files (the `builders` setting).

Spec: nix-protocols.md §2.1-2.4 (Nix 2.8 ``src/libstore/machines.cc``); design.md §5.

Where the text comes from (§2.1)
    The ``builders`` setting, default ``@/etc/nix/machines``. The legacy variable
    ``NIX_REMOTE_SYSTEMS`` (a colon-separated list of files) replaces it when set; see
    `machines_from_env_and_setting` for the one place we deliberately differ from Nix 2.8.

Syntax (§2.2), applied to the whole text::

    text   := piece (("\\n" | ";") piece)*       -- a ";" inside a URI splits too
    piece  := trimmed of " \\t\\r\\n", then cut at the first "#" (even inside a field)
              ""                                  -- skipped
            | "@" path                            -- include (path trimmed), recursively
            | field (ws+ field)*                  -- ws = " \\t\\r\\n"; fields past 8 ignored

An include whose file does not exist is empty (Nix treats ENOENT so); any other read error is
fatal. Relative include paths are passed to the reader as written (Nix opens them relative to
its working directory). Nix has no guard against an include cycle (it recurses until it
crashes); we stop at a cycle, at `MAX_INCLUDE_DEPTH` nested includes, and after
`MAX_INCLUDES` files read in one parse.

The eight fields (§2.3); ``-`` in any field means "default":

    ===  ==================  ==================================================  ============
    #    name                parse                                               default
    ===  ==================  ==================================================  ============
    1    store URI           required; bare ``host`` becomes ``ssh://host``      --
    2    systems             comma-separated, empty items dropped                the `system`
    3    SSH key             a path, verbatim                                    none
    4    max jobs            unsigned 32-bit decimal, optional ``+``             1
    5    speed factor        2.8: unsigned int; 2.20+: float. 0 becomes 1        1
    6    supported features  comma-separated set                                 empty
    7    mandatory features  comma-separated set                                 empty
    8    public host key     base64 of an OpenSSH public key line                none
    ===  ==================  ==================================================  ============

Speed factor: we accept what either version accepts — a non-negative decimal integer or
float (``2``, ``2.5``, ``1e3``) — and reject a sign ``-``, NaN, infinities and values that
overflow. Nix 2.8 itself would refuse ``2.5``; `render_machine` writes integral factors as
integers so that files we write stay readable by 2.8.

Public host key: checked the way Nix 2.8's ``base64Decode`` checks it — every character before
the first ``=`` must be in the standard base64 alphabet; nothing else (no length or padding
check). `decode_host_key` decodes it exactly as Nix does.

The seed's older 7-field ``remote-systems.conf`` (host, systems, key, max jobs, speed factor,
features, mandatory features) is a prefix of the same order: one parser reads both.

URI schemes: every URI parses, whatever its scheme (``ssh-ng://``, ``local``, a path, ...);
`Machine.scheme` lets the caller skip machines it cannot speak to.

Errors are `ConfigError`s naming file, line, field number and name and the offending value,
in one line: ``/etc/nix/machines:3: field 4 (max jobs): 'x' is not a non-negative integer``.
Line numbers are the 1-based lines of the file; ``;``-separated pieces carry the number of the
line they sit on. The text of the setting itself is named ``<builders>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from nixdist.errors import ConfigError
from nixdist.model.includes import check_include, show_value

ReadFile: TypeAlias = Callable[[str], "str | None"]
"""Reads a file: its text, None when it does not exist (ENOENT); raises `ConfigError` else."""

FIELD_NAMES: Final = (
    "store URI",
    "systems",
    "SSH key",
    "max jobs",
    "speed factor",
    "supported features",
    "mandatory features",
    "public host key",
)
"""The names of the eight fields, as they appear in error messages (field N is index N-1)."""

DEFAULT_FIELD: Final = "-"
"""How deeply ``@file`` includes may nest."""
MAX_INCLUDES: Final = 1000
"""How many ``@file`` includes one parse may read in total (stops include bombs)."""
MAX_UINT: Final = 2**32 - 1
"""The largest max-jobs Nix accepts (an ``unsigned int``)."""

_TRIM: Final = " \t\r\n"
_FIELD_SEPARATOR: Final = re.compile(r"[ \t\r\n]+")
_UNSIGNED: Final = re.compile(r"\+?[0-9]+")
_NUMBER: Final = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BASE64_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_VALUES: Final = {c: i for i, c in enumerate(_BASE64_ALPHABET)}
_SPECIAL_STORES: Final = ("auto", "daemon", "local")
_KEPT_PREFIXES: Final = ("auto?", "daemon?", "local?", "?")
_UNWRITABLE: Final = re.compile(r"[ \t\r\n;#]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """One builder line, with Nix's defaults applied.

    `uri` is normalised (a bare ``user@host`` becomes ``ssh://user@host``).
    `public_host_key` is the base64 text of field 8 as written (validated as base64).
    `source` names where the line came from (``file:line``), for error messages and `explain`.
    """

    uri: str
    systems: tuple[str, ...]
    ssh_key: str | None = None
    max_jobs: int = 1
    speed_factor: float = 1.0
    supported_features: frozenset[str] = frozenset()
    mandatory_features: frozenset[str] = frozenset()
    public_host_key: str | None = None
    source: str = ""

    @property
    def scheme(self) -> str:
        """The URI scheme (``ssh`` for ``ssh://host``, ``ssh-ng``, ...).

        "" when the URI has no ``://``: a local store path, ``auto``, ``daemon``, ``local``.
        Case is kept: Nix compares schemes case-sensitively.
        """
        scheme, sep, _ = self.uri.partition("://")
        return scheme if sep else ""

    @property
    def system_features(self) -> frozenset[str]:
        """Supported plus mandatory features: what Nix passes as the store's system-features."""
        return self.supported_features | self.mandatory_features


# ---------------------------------------------------------------------------------------
# Parsing


class _Parser:
    """One `parse_machines` call: the reader, the default system, the result so far."""

    def __init__(self, read_file: ReadFile, default_system: str) -> None:
        self.read_file = read_file
        self.default_system = default_system
        self.includes_read = 0
        self.machines: list[Machine] = []

    def parse_text(self, text: str, source: str, stack: tuple[str, ...]) -> None:
        for lineno, line in enumerate(text.split("\n"), start=1):
            for raw_piece in line.split(";"):
                piece = raw_piece.strip(_TRIM).partition("#")[0]
                if not piece:
                    continue
                if piece.startswith("@"):
                    self.include(piece[1:].strip(_TRIM), source, lineno, stack)
                else:
                    self.machines.append(_parse_line(piece, source, lineno, self.default_system))

    def include(self, path: str, source: str, lineno: int, stack: tuple[str, ...]) -> None:
        """Read and parse the file named by an ``@path`` piece found at `source`:`lineno`."""
        check_include(path, stack, source=source, line=lineno)
        self.includes_read += 1
        if self.includes_read > MAX_INCLUDES:
            raise ConfigError(
                f"more than {MAX_INCLUDES} files included, at {show_value(path)}",
                file=source,
                line=lineno,
            )
        try:
            text = self.read_file(path)
        except ConfigError as err:
            raise ConfigError(
                f"cannot read included file {show_value(path)}: {err.message}",
                file=source,
                line=lineno,
            ) from err
        if text is not None:
            self.parse_text(text, path, (*stack, path))


def parse_machines(
    text: str,
    *,
    source: str = "<builders>",
    read_file: ReadFile,
    default_system: str,
) -> tuple[Machine, ...]:
    """Parse machines-file text (a ``builders`` value or a file's contents), following includes.

    `read_file(path)` returns a file's text, None when it does not exist, and raises
    `ConfigError` for any other failure. `default_system` fills an absent systems field.
    Raises `ConfigError` (and nothing else) for malformed input.
    """
    parser = _Parser(read_file, default_system)
    parser.parse_text(text, source, (source,))
    return tuple(parser.machines)


def _parse_line(line: str, source: str, lineno: int, default_system: str) -> Machine:
    fields = [f for f in _FIELD_SEPARATOR.split(line) if f]

    def given(index: int) -> str | None:
        if index < len(fields) and fields[index] != DEFAULT_FIELD:
            return fields[index]
        return None

    def fail(index: int, message: str) -> ConfigError:
        return ConfigError(
            message, file=source, line=lineno, field=f"{index + 1} ({FIELD_NAMES[index]})"
        )

    uri = given(0)
    if uri is None:
        raise fail(0, "the store URI is required, not '-'")
    systems = given(1)
    ssh_key = given(2)
    max_jobs = given(3)
    speed = given(4)
    supported = given(5)
    mandatory = given(6)
    host_key = given(7)
    try:
        jobs_value = 1 if max_jobs is None else parse_max_jobs(max_jobs)
    except ValueError as err:
        raise fail(3, str(err)) from None
    try:
        speed_value = 1.0 if speed is None else parse_speed_factor(speed)
    except ValueError as err:
        raise fail(4, str(err)) from None
    if host_key is not None:
        try:
            decode_host_key(host_key)
        except ValueError as err:
            raise fail(7, str(err)) from None
    return Machine(
        uri=normalise_uri(uri),
        systems=(default_system,) if systems is None else _split_list(systems),
        ssh_key=ssh_key,
        max_jobs=jobs_value,
        speed_factor=speed_value,
        supported_features=frozenset(_split_list(supported or "")),
        mandatory_features=frozenset(_split_list(mandatory or "")),
        public_host_key=host_key,
        source=f"{source}:{lineno}",
    )


def normalise_uri(uri: str) -> str:
    """Nix's backwards-compatible URI rule: a bare ``[user@]host`` means ``ssh://[user@]host``.

    Left alone: anything with ``://`` or ``/`` (a path), ``auto``/``daemon``/``local`` (bare
    or with ``?params``) and ``?params``.
    """
    if "://" in uri or "/" in uri or uri in _SPECIAL_STORES or uri.startswith(_KEPT_PREFIXES):
        return uri
    return f"ssh://{uri}"


def _split_list(value: str) -> tuple[str, ...]:
    """A comma-separated list, empty items dropped, duplicates dropped, order kept."""
    return tuple(dict.fromkeys(item for item in value.split(",") if item))


def parse_max_jobs(value: str) -> int:
    """Field 4: an unsigned 32-bit decimal (``+`` allowed, as Nix's lexical_cast allows).

    Raises ValueError with a message naming the value.
    """
    if _UNSIGNED.fullmatch(value) is None:
        if value.startswith("-") and _UNSIGNED.fullmatch(value[1:]):
            raise ValueError(f"{show_value(value)} is negative")
        raise ValueError(f"{show_value(value)} is not a non-negative integer")
    number = int(value)
    if number > MAX_UINT:
        raise ValueError(f"{show_value(value)} is larger than {MAX_UINT}")
    return number


def parse_speed_factor(value: str) -> float:
    """Field 5: a non-negative finite number; 0 means 1 (as in Nix).

    Raises ValueError with a message naming the value.
    """
    if _NUMBER.fullmatch(value) is None:
        if value.startswith("-") and _NUMBER.fullmatch(value[1:]):
            raise ValueError(f"{show_value(value)} is negative")
        if value.lstrip("+-").lower() in {"nan", "inf", "infinity"}:
            raise ValueError(f"{show_value(value)} is not a finite number")
        raise ValueError(f"{show_value(value)} is not a non-negative number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{show_value(value)} is too large")
    return number or 1.0


def decode_host_key(value: str) -> bytes:
    """Decode field 8 exactly as Nix 2.8's ``base64Decode`` does.

    Stops at the first ``=``, skips newlines, and rejects any other character outside the
    standard alphabet (ValueError naming the character and its position); no padding or
    length check, leftover bits are dropped.
    """
    out = bytearray()
    acc = 0
    bits = 0
    for pos, char in enumerate(value):
        if char == "=":
            break
        if char == "\n":
            continue
        digit = _BASE64_VALUES.get(char)
        if digit is None:
            raise ValueError(
                f"{show_value(value)} is not base64: character {char!r} at position {pos + 1}"
            )
        acc = (acc << 6 | digit) & 0xFFFFFF
        bits += 6
        if bits >= 8:  # noqa: PLR2004 - eight bits make a byte
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Where the text comes from


def machines_from_env_and_setting(builders_setting: str, nix_remote_systems: str | None) -> str:
    """The effective machines text: ``NIX_REMOTE_SYSTEMS`` (if set) replaces ``builders``.

    ``NIX_REMOTE_SYSTEMS`` is a colon-separated list of machines files; empty items are
    dropped, so a set but empty variable means "no machines", as in Nix.

    Deliberate difference from Nix 2.8: Nix joins the ``@file`` items with *spaces*, which its
    own parser then reads as one include of a file named ``file1 @file2`` (nix-protocols.md
    §2.1), so only a single file works there. We put each ``@file`` on its own line, so that
    every listed file is read. A file name containing ``;``, ``#`` or a newline cannot be
    expressed in the machines syntax (in Nix either).

    (Nix 2.8 applies the variable before reading ``nix.conf``, so there a ``builders`` line in
    ``nix.conf`` wins over it; nixdist gives the variable precedence, design.md §2.)
    """
    if nix_remote_systems is None:
        return builders_setting
    return "\n".join(f"@{path}" for path in nix_remote_systems.split(":") if path)


# ---------------------------------------------------------------------------------------
# Rendering


def render_machine(machine: Machine) -> str:
    """The machine as one 8-field line that `parse_machines` reads back to an equal machine.

    (Equal except `source`, and a speed factor of 0, which reads back as 1.) Raises ValueError
    for a value the syntax cannot express (whitespace, ``;``, ``#``, or ``,`` inside a list
    item, an empty item). An empty systems list is written ``,``.
    """
    fields = [
        _token(machine.uri, "store URI"),
        _render_list(machine.systems, empty=","),
        DEFAULT_FIELD if machine.ssh_key is None else _token(machine.ssh_key, "SSH key"),
        str(machine.max_jobs),
        render_speed_factor(machine.speed_factor),
        _render_list(sorted(machine.supported_features), empty=DEFAULT_FIELD),
        _render_list(sorted(machine.mandatory_features), empty=DEFAULT_FIELD),
        DEFAULT_FIELD
        if machine.public_host_key is None
        else _token(machine.public_host_key, "public host key"),
    ]
    if fields[0].startswith("@"):
        raise ValueError(f"store URI {fields[0]!r} would read as an include")
    return " ".join(fields)


def render_speed_factor(speed: float) -> str:
    """Integral factors as integers (readable by Nix 2.8), others as Python's shortest repr."""
    if speed.is_integer():
        return str(int(speed))
    return repr(speed)


def _render_list(items: Sequence[str], *, empty: str) -> str:
    """A comma list; a list that is just ``-`` gets a trailing comma so it is not a default."""
    text = ",".join(items)
    if any(not item or "," in item or _UNWRITABLE.search(item) for item in items):
        raise ValueError(f"list {text!r} cannot be written in a machines file")
    if text == DEFAULT_FIELD:
        return f"{text},"
    return text or empty


def _token(value: str, what: str) -> str:
    if not value or value == DEFAULT_FIELD or _UNWRITABLE.search(value):
        raise ValueError(f"{what} {value!r} cannot be written in a machines file")
    return value


def machine_to_json(machine: Machine) -> dict[str, object]:
    """The machine as JSON-ready data; sets become sorted lists, absent values None."""
    return {
        "uri": machine.uri,
        "systems": list(machine.systems),
        "ssh_key": machine.ssh_key,
        "max_jobs": machine.max_jobs,
        "speed_factor": machine.speed_factor,
        "supported_features": sorted(machine.supported_features),
        "mandatory_features": sorted(machine.mandatory_features),
        "public_host_key": machine.public_host_key,
    }
