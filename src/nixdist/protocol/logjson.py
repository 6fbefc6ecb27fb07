"""Nix's ``@nix {json}`` log lines: the structured log a build hook writes on stderr.

A line is the five bytes ``@nix `` followed by one JSON object and a newline::

    @nix {"action":"msg","level":0,"msg":"error: build of '/nix/store/…drv' failed"}
    @nix {"action":"start","id":42,"level":3,"text":"copying 3 paths","type":103}
    @nix {"action":"result","fields":["hello"],"id":42,"type":101}
    @nix {"action":"stop","id":42}
    @nix {"action":"setPhase","phase":"buildPhase"}

Nix 2.8 writes these with nlohmann::json: compact, keys in sorted order, non-ASCII text as raw
UTF-8 (`encode_log_line` does the same, so re-encoding a line Nix wrote gives the same bytes).

The actions and their keys (``NixOS/nix@2.8.0:src/libutil/logging.cc``, ``JSONLogger``):

========== ==============================================================================
action     keys
========== ==============================================================================
msg        ``level`` (`Verbosity`), ``msg``. An error also carries ``raw_msg`` and ``line``,
           ``column``, ``file`` (``null`` when unknown) and, with ``--show-trace``, ``trace``.
start      ``id``, ``level``, ``type`` (`ActivityType`), ``text``, ``fields`` (omitted when
           empty); newer Nix adds ``parent``.
stop       ``id``.
result     ``id``, ``type`` (`ResultType`), ``fields`` (omitted when empty).
setPhase   ``phase``.
========== ==============================================================================

Every element of ``fields`` must be a JSON *unsigned* integer or a string: anything else makes
the reading Nix throw. A line that does not start with ``@nix `` is not a log message; a line
whose JSON does not parse makes Nix print ``bad JSON log message from builder`` and treat the
line as plain text.

How Nix reads a hook's stderr (nix-protocols.md §1.5, §1.7): before the reply every ``@nix``
line is handled and other lines are shown to the user verbatim; after ``# accept`` only
``@nix`` lines are used. A ``msg`` is re-logged at its level, so ``msg_line(Verbosity.ERROR,
…)`` is what a user always sees. Any message whose ``type`` is 101 has its first field appended
to the build log (meant for `ResultType.BUILD_LOG_LINE` results).

Parsing never raises: input that is not a well-formed message of a known action, with the key
types Nix requires, becomes `Passthrough`, so a hook can replay or forward anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeGuard, assert_never

from nixdist.wire.primitives import U64_MAX

PREFIX: Final = b"@nix "

#: A JSON log field: an unsigned integer or a string (no floats, booleans, nulls, negatives).
Field = int | str


class Verbosity(IntEnum):
    """Nix's log levels (``lvlError`` …); also the hook's command-line argument."""

    ERROR = 0
    WARN = 1
    NOTICE = 2
    INFO = 3
    TALKATIVE = 4
    CHATTY = 5
    DEBUG = 6
    VOMIT = 7


class ActivityType(IntEnum):
    """``ActivityType`` in ``NixOS/nix@2.8.0:src/libutil/logging.hh``."""

    UNKNOWN = 0
    COPY_PATH = 100
    FILE_TRANSFER = 101
    REALISE = 102
    COPY_PATHS = 103
    BUILDS = 104
    BUILD = 105
    OPTIMISE_STORE = 106
    VERIFY_PATHS = 107
    SUBSTITUTE = 108
    QUERY_PATH_INFO = 109
    POST_BUILD_HOOK = 110
    BUILD_WAITING = 111


class ResultType(IntEnum):
    """``ResultType`` in ``NixOS/nix@2.8.0:src/libutil/logging.hh``."""

    FILE_LINKED = 100
    BUILD_LOG_LINE = 101
    UNTRUSTED_PATH = 102
    CORRUPTED_PATH = 103
    SET_PHASE = 104
    PROGRESS = 105
    SET_EXPECTED = 106
    POST_BUILD_LOG_LINE = 107


_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")

#: The ``type`` value whose first field Nix appends to the build log (§1.7).
LOG_FILE_TYPE: Final = 101


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceFrame:
    """One element of an error message's ``trace`` (``--show-trace``)."""

    raw_msg: str
    file: str | None = None
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """``msg``: a message Nix re-logs at `level`.

    An error message (Nix's ``logEI``) has `raw_msg` set; then ``file``/``line``/``column`` are
    always written (as ``null`` when None) and `trace` when given.
    """

    level: int
    msg: str
    raw_msg: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None
    trace: tuple[TraceFrame, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """``start``: an activity begins (``type`` is an `ActivityType` value)."""

    id: int
    level: int
    type: int
    text: str
    fields: tuple[Field, ...] = ()
    parent: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """``stop``: activity `id` ends."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """``result``: a result of activity `id` (``type`` is a `ResultType` value)."""

    id: int
    type: int
    fields: tuple[Field, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPhase:
    """``setPhase``: the build entered `phase` (e.g. ``buildPhase``)."""

    phase: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Passthrough:
    """A line that is not a usable ``@nix`` message, kept as bytes without its newline."""

    line: bytes


LogMessage = Msg | Start | Stop | Result | SetPhase
LogEvent = LogMessage | Passthrough


# ---------------------------------------------------------------------------------------
# Parsing


class _BadMessageError(Exception):
    """Internal: the JSON object does not have the shape Nix requires."""


def _uint(obj: dict[str, object], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise _BadMessageError(key)
    return value


def _opt_uint(obj: dict[str, object], key: str) -> int | None:
    return None if obj.get(key) is None else _uint(obj, key)


def _str(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _BadMessageError(key)
    return value


def _opt_str(obj: dict[str, object], key: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key)


def _is_field(value: object) -> TypeGuard[Field]:
    if isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


def _fields(obj: dict[str, object]) -> tuple[Field, ...]:
    raw = obj.get("fields")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _BadMessageError("fields")
    out: list[Field] = []
    for item in raw:
        if not _is_field(item):
            raise _BadMessageError("fields")
        out.append(item)
    return tuple(out)


def _trace(obj: dict[str, object]) -> tuple[TraceFrame, ...] | None:
    raw = obj.get("trace")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _BadMessageError("trace")
    frames: list[TraceFrame] = []
    for item in raw:
        if not isinstance(item, dict):
            raise _BadMessageError("trace")
        frames.append(
            TraceFrame(
                raw_msg=_str(item, "raw_msg"),
                file=_opt_str(item, "file"),
                line=_opt_uint(item, "line"),
                column=_opt_uint(item, "column"),
            )
        )
    return tuple(frames)


def _message(obj: dict[str, object]) -> LogMessage:
    match obj.get("action"):
        case "msg":
            raw_msg = _opt_str(obj, "raw_msg")
            return Msg(
                level=_uint(obj, "level"),
                msg=_str(obj, "msg"),
                raw_msg=raw_msg,
                file=_opt_str(obj, "file"),
                line=_opt_uint(obj, "line"),
                column=_opt_uint(obj, "column"),
                trace=_trace(obj),
            )
        case "start":
            return Start(
                id=_uint(obj, "id"),
                level=_uint(obj, "level"),
                type=_uint(obj, "type"),
                text=_str(obj, "text"),
                fields=_fields(obj),
                parent=_opt_uint(obj, "parent"),
            )
        case "stop":
            return Stop(id=_uint(obj, "id"))
        case "result":
            return Result(id=_uint(obj, "id"), type=_uint(obj, "type"), fields=_fields(obj))
        case "setPhase":
            return SetPhase(phase=_str(obj, "phase"))
        case _:
            raise _BadMessageError("action")


def _reject_constant(name: str) -> object:
    """Python's json accepts NaN and Infinity; Nix's parser does not."""
    raise ValueError(name)


def parse_log_line(line: bytes | str) -> LogEvent:
    """Parse one line (a single trailing newline is ignored). Never raises.

    A `str` is encoded as UTF-8 (with ``surrogateescape``) first, so `Passthrough.line` is
    always bytes.
    """
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    raw = raw.removesuffix(b"\n")
    if not raw.startswith(PREFIX):
        return Passthrough(line=raw)
    try:
        obj = json.loads(
            raw[len(PREFIX) :].decode("utf-8", "replace"), parse_constant=_reject_constant
        )
        if not isinstance(obj, dict):
            return Passthrough(line=raw)
        return _message(obj)
    except (ValueError, RecursionError, _BadMessageError):
        return Passthrough(line=raw)


# ---------------------------------------------------------------------------------------
# Encoding


def _trace_json(frame: TraceFrame) -> dict[str, object]:
    out: dict[str, object] = {"raw_msg": frame.raw_msg}
    if frame.file is not None or frame.line is not None or frame.column is not None:
        out.update(file=frame.file, line=frame.line, column=frame.column)
    return out


def _fields_json(out: dict[str, object], fields: tuple[Field, ...]) -> None:
    for item in fields:
        if isinstance(item, int) and not 0 <= item <= U64_MAX:
            raise ValueError(f"log field {item} is not an unsigned 64-bit integer")
    if fields:
        out["fields"] = list(fields)


def _to_json(event: LogMessage) -> dict[str, object]:
    out: dict[str, object]
    match event:
        case Msg():
            out = {"action": "msg", "level": event.level, "msg": event.msg}
            if event.raw_msg is not None:
                out.update(
                    raw_msg=event.raw_msg, file=event.file, line=event.line, column=event.column
                )
            if event.trace is not None:
                out["trace"] = [_trace_json(f) for f in event.trace]
        case Start():
            out = {
                "action": "start",
                "id": event.id,
                "level": event.level,
                "type": event.type,
                "text": event.text,
            }
            _fields_json(out, event.fields)
            if event.parent is not None:
                out["parent"] = event.parent
        case Stop():
            out = {"action": "stop", "id": event.id}
        case Result():
            out = {"action": "result", "id": event.id, "type": event.type}
            _fields_json(out, event.fields)
        case SetPhase():
            out = {"action": "setPhase", "phase": event.phase}
        case _:  # pragma: no cover - exhaustiveness
            assert_never(event)
    return out


def encode_log_line(event: LogEvent) -> bytes:
    """The bytes of one line, newline included.

    A `Passthrough` is written back as it came (plus the newline). Text is written as
    UTF-8; a lone surrogate (from ``surrogateescape``) becomes U+FFFD, as Nix would write it.
    """
    if isinstance(event, Passthrough):
        return event.line + b"\n"
    text = json.dumps(_to_json(event), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return PREFIX + _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8") + b"\n"


#: What Nix's ``chomp`` strips.
_CHOMPED: Final = " \n\r\t"


def msg_line(level: Verbosity | int, text: str) -> bytes:
    """A ``msg`` line: Nix shows `text` when its verbosity is at least `level`."""
    return encode_log_line(Msg(level=int(level), msg=text))


def render_error(prefix: str, text: str) -> str:
    """`text` as Nix renders an error or a warning (``showErrorInfo``, 2.4 to 2.34): `prefix`
    (``error: ``) before the first line, as many spaces before the others, trailing whitespace
    dropped from each line and from the whole."""
    pad = " " * len(prefix)
    lines = text.rstrip(_CHOMPED).split("\n")
    return "\n".join(
        ((pad if i else prefix) + line).rstrip(_CHOMPED) for i, line in enumerate(lines)
    )


def error_line(text: str) -> bytes:
    """The line for a user-visible error, shown by Nix as ``error: <text>``.

    Nix prints a ``msg`` verbatim, so the ``error: `` prefix is part of the message (as
    build-remote writes it), and a message of several lines is indented as Nix indents its
    own (a remote build's error often has several); the level is `Verbosity.ERROR`, which is
    always shown.
    """
    return msg_line(Verbosity.ERROR, render_error("error: ", text))
