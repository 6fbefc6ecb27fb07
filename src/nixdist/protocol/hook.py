"""The build-hook protocol, as Nix 2.x speaks it to the program named by ``build-hook``.

Nix starts the hook with ``argv = [name, …, str(verbosity)]`` (verbosity is always last),
stdin a pipe from Nix, stdout and stderr the same pipe back to Nix, fd 4 the build-log pipe
(nix-protocols.md §1.2). The exchange (``→`` Nix to hook on stdin, ``←`` hook to Nix on
stderr, one text line each)::

    → settings block   ( u64(1) str(name) str(value) )* u64(0)    every global setting, sorted
    → str("try") u64(am_willing) str(system) str(drv_path) strs(required_features)
    ← "# decline\\n"                    build it locally; the same hook gets the next try
    → str("try") …
    ← "# postpone\\n"                   ask again later (another child ended, or after
                                       build-poll-interval seconds)
    → str("try") …
    ← "# accept\\n" "<machine>\\n"       this process now belongs to that derivation
    → strs(input_paths) strs(wanted_outputs)   then EOF on stdin
    ← @nix {json} lines …               progress and errors; build log bytes go to fd 4
      exit 0 | 100 | 101 | 1             (`HookExit`; 0 only if every wanted output is valid)

``# decline-permanently`` answers one ``try`` like ``# decline`` and makes Nix drop the hook
for the rest of its run (build-remote says it when no machines are configured). EOF on stdin,
or a first word other than ``try``, means the hook should exit 0.

What Nix reads from the hook's stderr (``tryBuildHook`` in
``NixOS/nix@2.8.0:src/libstore/build/derivation-goal.cc``): line by line until a reply, a
line starting with ``@nix `` is a JSON log message (`nixdist.protocol.logjson`), a line
starting with ``# `` is the reply word, any other line is copied to the user's terminal.
After ``# accept`` the next line is the machine name, read raw. While the build runs only
``@nix`` lines are used; plain lines are dropped. `HookOutputState` models exactly that, so a
captured session can be replayed.

This module is pure: it encodes and decodes both directions (the hook side and Nix's side,
the latter for replaying captured sessions and for fake-Nix tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum, StrEnum
from typing import Final, assert_never

from nixdist.errors import ConfigError, LocalProtocolError, ParseError, WireError
from nixdist.model.request import BuildRequest
from nixdist.protocol.logjson import LogMessage, Passthrough, Verbosity, parse_log_line
from nixdist.wire.primitives import (
    LIMIT_COUNT,
    LIMIT_PATH,
    LIMIT_TEXT,
    U64_MAX,
    Reader,
    encode_bool,
    encode_text,
    encode_texts,
    encode_u64,
)

TRY: Final = "try"
#: Largest number of settings accepted in one block (Nix 2.8 sends about 90).
LIMIT_SETTINGS: Final = 4096
_SETTING_MORE: Final = 1
_SETTING_END: Final = 0


class HookExit(IntEnum):
    """The hook's exit status, as Nix judges it (``buildDone``, §1.8)."""

    OK = 0  # Nix then checks that every wanted output is valid; if not, the whole run aborts
    FAILED = 1  # MiscFailure
    BUILD_FAILED = 100  # PermanentFailure (TransientFailure for fixed-output derivations)
    TIMED_OUT = 101  # TimedOut


# ---------------------------------------------------------------------------------------
# Command line


def parse_hook_verbosity(argv: Sequence[str]) -> Verbosity:
    """The verbosity Nix passed: the last argument (2.8: ``[name, v]``; 2.17+: ``[prog, …, v]``)."""
    if len(argv) < 2:  # noqa: PLR2004 - program name plus the verbosity
        raise ParseError(f"build hook started without a verbosity argument: {list(argv)!r}")
    text = argv[-1]
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"build hook verbosity {text!r} is not a decimal number")
    return Verbosity(min(int(text), Verbosity.VOMIT))


# ---------------------------------------------------------------------------------------
# Settings block


def encode_settings(settings: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The settings block, in the order given (Nix sends them sorted by name)."""
    items = settings.items() if isinstance(settings, Mapping) else settings
    out = bytearray()
    for name, value in items:
        out += encode_u64(_SETTING_MORE) + encode_text(name) + encode_text(value)
    out += encode_u64(_SETTING_END)
    return bytes(out)


def decode_settings(reader: Reader) -> dict[str, str]:
    """Read a settings block; the dict keeps the wire order."""
    settings: dict[str, str] = {}
    while True:
        start = reader.pos
        marker = reader.read_u64()
        if marker == _SETTING_END:
            return settings
        if marker != _SETTING_MORE:
            raise WireError(f"settings block: marker {marker} at offset {start} is neither 0 nor 1")
        if len(settings) >= LIMIT_SETTINGS:
            raise WireError(f"settings block has more than {LIMIT_SETTINGS} entries")
        name = reader.read_text(LIMIT_PATH)
        value = reader.read_text(LIMIT_TEXT)
        if name in settings:
            raise WireError(f"settings block: setting {name!r} sent twice")
        settings[name] = value


_SETTINGS_SOURCE: Final = "<settings from Nix>"
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})


def _setting_bool(settings: Mapping[str, str], name: str, default: bool) -> bool:
    value = settings.get(name)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{value!r} is not a boolean (true or false)", file=_SETTINGS_SOURCE, field=name
    )


def _setting_uint(settings: Mapping[str, str], name: str, default: int) -> int:
    value = settings.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or int(value) > U64_MAX:
        raise ConfigError(
            f"{value!r} is not a non-negative integer", file=_SETTINGS_SOURCE, field=name
        )
    return int(value)


def _setting_words(settings: Mapping[str, str], name: str, default: str) -> frozenset[str]:
    return frozenset(settings.get(name, default).split())


@dataclass(frozen=True, slots=True, kw_only=True)
class HookSettings:
    """The settings a hook acts on, typed; defaults are Nix 2.8's for a missing name.

    Build one with `HookSettings.parse`. `raw` keeps the whole block (for settings not
    listed here, and to pass on). ``builders`` is the raw value (machines-file syntax,
    ``@file`` includes): parsing it is `nixdist.model.machines`' job.
    """

    builders: str = "@/etc/nix/machines"
    system: str = ""
    system_features: frozenset[str] = frozenset()
    extra_platforms: frozenset[str] = frozenset()
    max_jobs: int = 1
    builders_use_substitutes: bool = False
    store: str = "auto"
    max_silent_time: int = 0
    timeout: int = 0
    max_build_log_size: int = 0
    keep_failed: bool = False
    build_poll_interval: int = 5
    repeat: int = 0
    enforce_determinism: bool = True
    raw: Mapping[str, str] = field(default_factory=dict)

    @property
    def bracketed_reports(self) -> bool:
        """Whether the Nix that sent these settings prints its "Failed to find a machine"
        report with bracketed lists (Nix 2.12+). The hook is not told Nix's version; the
        settings block tells it: ``max-substitution-jobs`` is sent by 2.16 and later (so 2.12
        to 2.15 get the older form)."""
        return "max-substitution-jobs" in self.raw

    @classmethod
    def parse(cls, settings: Mapping[str, str]) -> HookSettings:
        """Type the settings Nix sent; a malformed value raises `ConfigError` naming it."""
        d = cls()
        return cls(
            builders=settings.get("builders", d.builders),
            system=settings.get("system", d.system),
            system_features=_setting_words(settings, "system-features", ""),
            extra_platforms=_setting_words(settings, "extra-platforms", ""),
            max_jobs=_setting_uint(settings, "max-jobs", d.max_jobs),
            builders_use_substitutes=_setting_bool(
                settings, "builders-use-substitutes", d.builders_use_substitutes
            ),
            store=settings.get("store", d.store),
            max_silent_time=_setting_uint(settings, "max-silent-time", d.max_silent_time),
            timeout=_setting_uint(settings, "timeout", d.timeout),
            max_build_log_size=_setting_uint(settings, "max-build-log-size", d.max_build_log_size),
            keep_failed=_setting_bool(settings, "keep-failed", d.keep_failed),
            build_poll_interval=_setting_uint(
                settings, "build-poll-interval", d.build_poll_interval
            ),
            repeat=_setting_uint(settings, "repeat", d.repeat),
            enforce_determinism=_setting_bool(
                settings, "enforce-determinism", d.enforce_determinism
            ),
            raw=dict(settings),
        )

    @property
    def local_systems(self) -> frozenset[str]:
        """Systems this machine builds natively: ``system`` plus ``extra-platforms``."""
        return self.extra_platforms | {self.system}


# ---------------------------------------------------------------------------------------
# Requests on stdin


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownHookCommand:
    """A first word other than ``try``: build-remote exits 0. Nothing after it is read."""

    word: str


HookCommand = BuildRequest | UnknownHookCommand


def encode_try(request: BuildRequest) -> bytes:
    return (
        encode_text(TRY)
        + encode_bool(request.am_willing)
        + encode_text(request.system)
        + encode_text(request.drv_path)
        + encode_texts(sorted(request.required_features))
    )


def decode_hook_command(reader: Reader) -> HookCommand:
    """Read one request: a `BuildRequest`, or the unknown first word."""
    word = reader.read_text(LIMIT_PATH)
    if word != TRY:
        return UnknownHookCommand(word=word)
    return BuildRequest(
        am_willing=reader.read_bool(),
        system=reader.read_text(LIMIT_PATH),
        drv_path=reader.read_text(LIMIT_PATH),
        required_features=frozenset(reader.read_texts(LIMIT_PATH, LIMIT_COUNT)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedWork:
    """What Nix sends after ``# accept`` (then it closes stdin) (§1.6).

    `inputs`: full store paths, the closure of the inputs (never ``.drv`` files).
    `wanted_outputs`: names of the outputs not yet valid locally (all of them in check mode).
    """

    inputs: frozenset[str]
    wanted_outputs: frozenset[str]


def encode_accepted_work(work: AcceptedWork) -> bytes:
    return encode_texts(sorted(work.inputs)) + encode_texts(sorted(work.wanted_outputs))


def decode_accepted_work(reader: Reader) -> AcceptedWork:
    return AcceptedWork(
        inputs=frozenset(reader.read_texts(LIMIT_PATH, LIMIT_COUNT)),
        wanted_outputs=frozenset(reader.read_texts(LIMIT_PATH, LIMIT_COUNT)),
    )


# ---------------------------------------------------------------------------------------
# Replies on stderr


class Reply(StrEnum):
    """The reply words (after ``# ``)."""

    ACCEPT = "accept"
    DECLINE = "decline"
    POSTPONE = "postpone"
    DECLINE_PERMANENTLY = "decline-permanently"


REPLY_PREFIX: Final = b"# "


def encode_reply(reply: Reply, machine: str | None = None) -> bytes:
    """The reply line(s): ``# accept\\n<machine>\\n``, or ``# <word>\\n`` for the others.

    `machine` (any text without a newline; Nix only displays it) is required for accept and
    forbidden otherwise.
    """
    line = REPLY_PREFIX + reply.value.encode("ascii") + b"\n"
    if reply is Reply.ACCEPT:
        if machine is None:
            raise LocalProtocolError("'# accept' must name the machine")
        if "\n" in machine or "\r" in machine:
            raise LocalProtocolError(f"machine name {machine!r} contains a line break")
        return line + machine.encode("utf-8", "surrogateescape") + b"\n"
    if machine is not None:
        raise LocalProtocolError(f"'# {reply.value}' takes no machine name")
    return line


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyLine:
    """A ``# <word>`` line. `reply` is None for a word Nix rejects (``bad hook reply``)."""

    word: str

    @property
    def reply(self) -> Reply | None:
        try:
            return Reply(self.word)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineLine:
    """The line after ``# accept``: the machine Nix shows the build as running on."""

    machine: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    """An ``@nix`` line Nix handles as a structured log message."""

    message: LogMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherLine:
    """Any other line: `shown` if Nix copies it to its stderr (before the reply), else dropped.

    A malformed ``@nix`` line lands here too (Nix prints ``bad JSON log message`` and then
    treats it as plain text).
    """

    line: bytes
    shown: bool


HookOutputLine = ReplyLine | MachineLine | LogLine | OtherLine


def parse_hook_output_line(line: bytes | str) -> ReplyLine | LogLine | OtherLine:
    """Classify one line as Nix does while waiting for a reply (trailing newline ignored)."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    raw = raw.removesuffix(b"\n")
    event = parse_log_line(raw)
    if not isinstance(event, Passthrough):
        return LogLine(message=event)
    if raw.startswith(REPLY_PREFIX):
        return ReplyLine(word=raw[len(REPLY_PREFIX) :].decode("utf-8", "surrogateescape"))
    return OtherLine(line=raw, shown=True)


class HookOutputPhase(Enum):
    """Where Nix is in reading the hook's stderr."""

    AWAIT_REPLY = "await-reply"  # @nix handled, "# word" ends it, others shown
    AWAIT_MACHINE = "await-machine"  # after "# accept": next line is the machine name
    BUILDING = "building"  # only @nix lines count, others dropped
    DONE = "done"  # after decline-permanently, or a bad reply word: Nix stops reading


# Theory of operation: one transition per reply; everything else keeps the phase.
_AFTER_REPLY: Final[Mapping[Reply | None, HookOutputPhase]] = {
    Reply.ACCEPT: HookOutputPhase.AWAIT_MACHINE,
    Reply.DECLINE: HookOutputPhase.AWAIT_REPLY,
    Reply.POSTPONE: HookOutputPhase.AWAIT_REPLY,
    Reply.DECLINE_PERMANENTLY: HookOutputPhase.DONE,
    None: HookOutputPhase.DONE,
}


class HookOutputState:
    """Nix's reader of the hook's stderr, fed with bytes: for replaying captured sessions.

    `feed` returns the complete lines seen so far, classified for the current phase; `close`
    returns a last unterminated line, if any (Nix ignores such a line before a reply, since it
    waits for the newline; it is returned as an unshown `OtherLine`).
    """

    __slots__ = ("_buffer", "phase")

    def __init__(self) -> None:
        self.phase = HookOutputPhase.AWAIT_REPLY
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[HookOutputLine]:
        self._buffer += data
        out: list[HookOutputLine] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            out.append(self._classify(line))
        return out

    def close(self) -> list[HookOutputLine]:
        if not self._buffer:
            return []
        line = bytes(self._buffer)
        self._buffer.clear()
        return [OtherLine(line=line, shown=False)]

    def _classify(self, line: bytes) -> HookOutputLine:
        match self.phase:
            case HookOutputPhase.AWAIT_REPLY:
                parsed = parse_hook_output_line(line)
                if isinstance(parsed, ReplyLine):
                    self.phase = _AFTER_REPLY[parsed.reply]
                return parsed
            case HookOutputPhase.AWAIT_MACHINE:
                self.phase = HookOutputPhase.BUILDING
                return MachineLine(machine=line.decode("utf-8", "surrogateescape"))
            case HookOutputPhase.BUILDING | HookOutputPhase.DONE:
                event = parse_log_line(line)
                if isinstance(event, Passthrough):
                    return OtherLine(line=line, shown=False)
                return LogLine(message=event)
            case _:  # pragma: no cover - exhaustiveness
                assert_never(self.phase)
