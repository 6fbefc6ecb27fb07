"""The ``nix-store --serve`` protocol (``ssh://`` stores): constants, versions, handshake.

The messages of each command are in `nixdist.protocol.serve_messages`. Spec:
nix-protocols.md §3; source ``NixOS/nix@2.8.0:src/nix-store/nix-store.cc`` (``opServe``,
the server) and ``src/libstore/legacy-ssh-store.cc`` (the client).

Theory of operation
-------------------

One session is one ``nix-store --serve --write`` process; its stdin and stdout carry the
protocol (over ssh, or a local pipe), its stderr carries logs and errors::

    client                                          server
      u64(SERVE_MAGIC_1) u64(client version)  ──▶         (may be sent together)
                                              ◀──  u64(SERVE_MAGIC_2) u64(server version)
      both sides now use negotiated_version(client, server)
      u64(command) arguments [payload]        ──▶
                                              ◀──  reply, flushed
      …                                              (one command at a time, in order)
      EOF                                     ──▶  server exits 0

There is no in-band error reporting (except for BuildPaths): on any error the server writes
``error: …`` on its stderr and exits 1, so the client sees EOF in the middle of a reply. A
remote shell that prints on stdout (a login banner, ``echo`` in ``.bashrc``) corrupts the
greeting: `decode_server_hello` reports what it got, in words (`ServeGreetingError`).

Versions are ``major << 8 | minor``; only major 2 exists. 2.8-2.22 servers use the client's
version and clients the server's; 2.23+ both use the minimum. We advertise 0x207 and gate
every field on ``min(ours, theirs)`` (`negotiated_version`), which is right for both. Every
version-dependent field is gated by one of the ``SINCE_*`` constants below, in the codec of
its message.

==========  =====  ============================================================================
Nix         serve  adds
==========  =====  ============================================================================
1.8 - 1.9   2.0    the protocol
1.10        2.1
1.11        2.2    ``max_log_size`` in BuildOptions (`SINCE_MAX_LOG_SIZE`)
(none)      2.3    ``nr_repeats``, ``enforce_determinism`` in BuildOptions; times and
                   non-determinism in BuildResult (`SINCE_REPEATS`, `SINCE_BUILD_TIMES`)
2.0         2.4    narHash, ca, sigs in QueryPathInfos replies (`SINCE_PATH_INFO_HASH`)
2.1 - 2.3   2.5    AddToStoreNar, command 9 (`SINCE_ADD_TO_STORE_NAR`)
(none)      2.6    builtOutputs in BuildResult (`SINCE_BUILT_OUTPUTS`)
2.4 - 2.34  2.7    ``keep_failed`` in BuildOptions (`SINCE_KEEP_FAILED`)
2.35        2.8    binary realisations, no ExportPaths (not spoken here)
==========  =====  ============================================================================

Known server bug: Nix 2.4 - 2.11 servers send the builtOutputs map to every client, whatever
version it announced (``GET_PROTOCOL_MINOR(clientVersion >= 6)``). Announcing 2.7 avoids it:
the negotiated version is then ≥ 2.6 with every server that has the bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from nixdist.errors import LocalProtocolError, ParseError, RemoteProtocolError, WireError
from nixdist.model.derivation import BasicDerivation, DerivationOutput
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.wire.primitives import (
    LIMIT_COUNT,
    LIMIT_PATH,
    LIMIT_TEXT,
    U32_MAX,
    Reader,
    encode_bool,
    encode_text,
    encode_texts,
    encode_u64,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

SERVE_MAGIC_1: Final = 0x390C9DEB  # client greeting
SERVE_MAGIC_2: Final = 0x5452EECB  # server greeting
#: The daemon protocol's server greeting (`nixdist.protocol.worker`): seen here when
#: ``nix-daemon --stdio`` answers instead.
WORKER_MAGIC_2: Final = 0x6478696F

PROTOCOL_VERSION: Final = 0x207  # what we announce: 2.7
MAJOR_MASK: Final = 0xFF00
MINOR_MASK: Final = 0x00FF
SUPPORTED_MAJOR: Final = 0x200

# Version gates: a field exists when the negotiated version is at least this.
SINCE_MAX_LOG_SIZE: Final = 0x202
SINCE_REPEATS: Final = 0x203
SINCE_BUILD_TIMES: Final = 0x203
SINCE_PATH_INFO_HASH: Final = 0x204
SINCE_ADD_TO_STORE_NAR: Final = 0x205
SINCE_BUILT_OUTPUTS: Final = 0x206
SINCE_KEEP_FAILED: Final = 0x207

_SERVER_MAGIC_BYTES: Final = encode_u64(SERVE_MAGIC_2)
_WORKER_MAGIC_BYTES: Final = encode_u64(WORKER_MAGIC_2)
_SHOWN_CHARS: Final = 300
_SHOWN_BYTES: Final = 64


class ServeCommand(IntEnum):
    """Command codes (``ServeCommand`` in ``serve-protocol.hh``)."""

    QUERY_VALID_PATHS = 1
    QUERY_PATH_INFOS = 2
    DUMP_STORE_PATH = 3
    IMPORT_PATHS = 4
    EXPORT_PATHS = 5
    BUILD_PATHS = 6
    QUERY_CLOSURE = 7
    BUILD_DERIVATION = 8
    ADD_TO_STORE_NAR = 9


class BuildStatus(IntEnum):
    """``BuildResult::Status`` (``build-result.hh``); append-only, the same up to Nix 2.35."""

    BUILT = 0
    SUBSTITUTED = 1
    ALREADY_VALID = 2
    PERMANENT_FAILURE = 3
    INPUT_REJECTED = 4
    OUTPUT_REJECTED = 5
    TRANSIENT_FAILURE = 6
    CACHED_FAILURE = 7  # no longer produced
    TIMED_OUT = 8
    MISC_FAILURE = 9
    DEPENDENCY_FAILED = 10
    LOG_LIMIT_EXCEEDED = 11
    NOT_DETERMINISTIC = 12
    RESOLVES_TO_ALREADY_VALID = 13
    NO_SUBSTITUTERS = 14

    @property
    def is_success(self) -> bool:
        return self in _SUCCESS


_SUCCESS: Final = frozenset(
    {
        BuildStatus.BUILT,
        BuildStatus.SUBSTITUTED,
        BuildStatus.ALREADY_VALID,
        BuildStatus.RESOLVES_TO_ALREADY_VALID,
    }
)


def version_major(version: int) -> int:
    return (version & MAJOR_MASK) >> 8


def version_minor(version: int) -> int:
    return version & MINOR_MASK


def format_version(version: int) -> str:
    """``0x207`` → ``"2.7"``."""
    return f"{version_major(version)}.{version_minor(version)}"


def check_version(version: int, who: str) -> int:
    """Return `version` if it is ``0x2NN``, else raise `RemoteProtocolError`."""
    if version & ~MINOR_MASK != SUPPORTED_MAJOR:
        raise RemoteProtocolError(
            f"unsupported 'nix-store --serve' protocol version {version:#x} from the {who}; "
            f"nixdist speaks {format_version(PROTOCOL_VERSION)} and every 2.x"
        )
    return version


def negotiated_version(client: int, server: int) -> int:
    """The version both sides gate fields on: the smaller one."""
    return min(check_version(client, "client"), check_version(server, "server"))


# ---------------------------------------------------------------------------------------
# Handshake


def encode_client_hello(version: int = PROTOCOL_VERSION) -> bytes:
    return encode_u64(SERVE_MAGIC_1) + encode_u64(version)


def decode_client_hello(reader: Reader) -> int:
    """Read the client's magic and version (server side); returns the client version."""
    magic = reader.read_u64()
    if magic != SERVE_MAGIC_1:
        raise RemoteProtocolError(
            f"'nix-store --serve' protocol mismatch: expected {SERVE_MAGIC_1:#x} from the "
            f"client, got {magic:#x}"
        )
    return check_version(reader.read_u64(max_value=U32_MAX), "client")


def encode_server_hello(version: int = PROTOCOL_VERSION) -> bytes:
    return encode_u64(SERVE_MAGIC_2) + encode_u64(version)


def decode_server_hello(reader: Reader) -> int:
    """Read the server's magic and version (client side); returns the server version.

    Fails with `ServeGreetingError` as soon as the bytes received differ from the magic, with
    everything in the buffer so far, so a remote shell's chatter is shown in words.
    """
    available = min(len(_SERVER_MAGIC_BYTES), reader.remaining)
    head = reader.read_raw(available)
    if head != _SERVER_MAGIC_BYTES[:available]:
        raise ServeGreetingError(head + reader.read_raw(reader.remaining))
    reader.read_raw(len(_SERVER_MAGIC_BYTES) - available)  # waits for the rest (NeedData)
    return check_version(reader.read_u64(max_value=U32_MAX), "server")


def _show(data: bytes) -> str:
    """The text at the start of `data` (what a shell printed), else the first bytes in hex."""
    text = data.decode("utf-8", "replace")
    end = next((i for i, ch in enumerate(text) if not (ch.isprintable() or ch in "\t\r\n")), None)
    shown = text[:end].strip()
    if not shown:
        return data[:_SHOWN_BYTES].hex(" ") + (" …" if len(data) > _SHOWN_BYTES else "")
    more = "…" if len(shown) > _SHOWN_CHARS else ""
    binary = " followed by binary data" if end is not None else ""
    return repr(shown[:_SHOWN_CHARS] + more) + binary


class ServeGreetingError(RemoteProtocolError):
    """The server's first bytes are not the ``nix-store --serve`` greeting.

    `received` holds the bytes read so far; a caller that can read more (until EOF or a
    short timeout) may raise a new one with all of them, for a better message.
    """

    def __init__(
        self, received: bytes, *, host: str | None = None, eof: bool = False, said: str = ""
    ) -> None:
        self.received = received
        self.host = host
        self.eof = eof
        self.said = said  # what the remote side printed on stderr, if known
        super().__init__(self._render() + (f" The remote said: {said}" if said else ""))

    def _render(self) -> str:
        where = f" from '{self.host}'" if self.host else ""
        if not self.received:
            return (
                f"'nix-store --serve'{where} closed the connection before its greeting: "
                "is nix-store installed and on PATH for non-interactive shells "
                "(see the remote's stderr)?"
            )
        if self.received.startswith(_WORKER_MAGIC_BYTES):
            return (
                f"'nix-store --serve' protocol mismatch{where}: the remote speaks the "
                "nix-daemon protocol (an ssh-ng:// store or a nix-daemon remote program), "
                "not 'nix-store --serve'"
            )
        cut = " (then the connection closed)" if self.eof else ""
        return (
            f"'nix-store --serve' protocol mismatch{where}: expected its greeting, got "
            f"{_show(self.received)}{cut}. Something on the remote printed this on stdout "
            "before nix-store started: usually the remote shell's startup files (.bashrc, "
            ".profile, an 'echo' or a banner) or a forced command. Make them print nothing "
            "for non-interactive sessions."
        )


# ---------------------------------------------------------------------------------------
# Shared field codecs


def encode_u32(value: int, what: str) -> bytes:
    """A field Nix reads as ``unsigned int``: larger values make it fail."""
    if not 0 <= value <= U32_MAX:
        raise LocalProtocolError(f"{what} {value} does not fit in 32 bits")
    return encode_u64(value)


def _nix_order(items: Iterable[str]) -> list[str]:
    """Nix's ``std::set<std::string>`` order: bytewise."""
    return sorted(items, key=lambda s: s.encode("utf-8", "surrogateescape"))


def encode_store_paths(paths: Iterable[StorePath]) -> bytes:
    """A store path set, in Nix's order (by basename)."""
    return encode_texts(str(p) for p in sorted(paths))


def parse_peer_store_path(text: str, store_dir: str) -> StorePath:
    try:
        return StorePath.parse(text, store_dir)
    except ParseError as err:
        raise RemoteProtocolError(f"peer sent an invalid store path: {err}") from None


def read_store_path(reader: Reader, store_dir: str = STORE_DIR) -> StorePath:
    return parse_peer_store_path(reader.read_text(LIMIT_PATH), store_dir)


def read_store_paths(reader: Reader, store_dir: str = STORE_DIR) -> frozenset[StorePath]:
    """A store path set; a path sent twice counts once (as in Nix)."""
    return frozenset(
        parse_peer_store_path(t, store_dir) for t in reader.read_texts(LIMIT_PATH, LIMIT_COUNT)
    )


def read_count(reader: Reader, what: str) -> int:
    start = reader.pos
    count = reader.read_u64()
    if count > LIMIT_COUNT:
        raise WireError(f"{what}: {count} entries at offset {start} exceed the limit {LIMIT_COUNT}")
    return count


# ---------------------------------------------------------------------------------------
# BuildOptions (§3.5)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    """Settings sent with BuildPaths and BuildDerivation; zero means "no limit".

    The defaults are what a Nix 2.8 client sends with default settings. ``nr_repeats`` must
    stay 0 for Nix 2.19+ servers (they reject anything else).
    """

    max_silent_time: int = 0
    build_timeout: int = 0
    max_log_size: int = 0
    nr_repeats: int = 0
    enforce_determinism: bool = True
    keep_failed: bool = False


def encode_build_options(options: BuildOptions, version: int) -> bytes:
    out = encode_u32(options.max_silent_time, "max_silent_time")
    out += encode_u32(options.build_timeout, "build_timeout")
    if version >= SINCE_MAX_LOG_SIZE:
        out += encode_u64(options.max_log_size)
    if version >= SINCE_REPEATS:
        out += encode_u32(options.nr_repeats, "nr_repeats")
        out += encode_bool(options.enforce_determinism)
    if version >= SINCE_KEEP_FAILED:
        out += encode_bool(options.keep_failed)
    return out


def decode_build_options(reader: Reader, version: int) -> BuildOptions:
    max_silent_time = reader.read_u64(max_value=U32_MAX)
    build_timeout = reader.read_u64(max_value=U32_MAX)
    max_log_size = reader.read_u64() if version >= SINCE_MAX_LOG_SIZE else 0
    nr_repeats, enforce_determinism = 0, True
    if version >= SINCE_REPEATS:
        nr_repeats = reader.read_u64(max_value=U32_MAX)
        enforce_determinism = reader.read_bool()
    keep_failed = reader.read_bool() if version >= SINCE_KEEP_FAILED else False
    return BuildOptions(
        max_silent_time=max_silent_time,
        build_timeout=build_timeout,
        max_log_size=max_log_size,
        nr_repeats=nr_repeats,
        enforce_determinism=enforce_determinism,
        keep_failed=keep_failed,
    )


# ---------------------------------------------------------------------------------------
# BasicDerivation (§3.6)


def encode_basic_derivation(drv: BasicDerivation) -> bytes:
    """The derivation as Nix writes it: outputs and env sorted, input sources by basename.

    `drv.name` is not sent: the receiver takes it from the ``.drv`` path.
    """
    out = bytearray(encode_u64(len(drv.outputs)))
    for name in _nix_order(drv.outputs):
        output = drv.outputs[name]
        out += encode_text(name) + encode_text(output.path)
        out += encode_text(output.hash_algo) + encode_text(output.hash)
    out += encode_texts(sorted(drv.input_srcs, key=lambda p: p.rpartition("/")[2]))
    out += encode_text(drv.platform) + encode_text(drv.builder) + encode_texts(drv.args)
    out += encode_u64(len(drv.env))
    for key in _nix_order(drv.env):
        out += encode_text(key) + encode_text(drv.env[key])
    return bytes(out)


def decode_basic_derivation(
    reader: Reader, name: str, store_dir: str = STORE_DIR
) -> BasicDerivation:
    """Read a BasicDerivation; `name` comes from the ``.drv`` path (it is not on the wire).

    Paths are checked to be store paths and kept as text; duplicate output names or env keys
    are an error.
    """
    outputs: dict[str, DerivationOutput] = {}
    for _ in range(read_count(reader, "derivation outputs")):
        output_name = reader.read_text(LIMIT_PATH)
        path = reader.read_text(LIMIT_PATH)
        if path:
            parse_peer_store_path(path, store_dir)
        output = DerivationOutput(
            path=path, hash_algo=reader.read_text(LIMIT_PATH), hash=reader.read_text(LIMIT_PATH)
        )
        if output_name in outputs:
            raise RemoteProtocolError(f"derivation output {output_name!r} sent twice")
        outputs[output_name] = output
    input_srcs = reader.read_texts(LIMIT_PATH, LIMIT_COUNT)
    for path in input_srcs:
        parse_peer_store_path(path, store_dir)
    platform = reader.read_text(LIMIT_PATH)
    builder = reader.read_text(LIMIT_TEXT)
    args = reader.read_texts(LIMIT_TEXT, LIMIT_COUNT)
    env: dict[str, str] = {}
    for _ in range(read_count(reader, "derivation environment")):
        key = reader.read_text(LIMIT_TEXT)
        value = reader.read_text(LIMIT_TEXT)
        if key in env:
            raise RemoteProtocolError(f"derivation environment variable {key!r} sent twice")
        env[key] = value
    return BasicDerivation(
        name=name,
        outputs=outputs,
        input_srcs=tuple(input_srcs),
        platform=platform,
        builder=builder,
        args=tuple(args),
        env=env,
    )


# ---------------------------------------------------------------------------------------
# BuildResult (§3.7)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    """The reply to BuildDerivation.

    `built_outputs` maps a DrvOutput id (``sha256:<base16>!<output>``) to the realisation
    JSON text as sent (keys ``id``, ``outPath`` (a basename), ``signatures``,
    ``dependentRealisations``). Not hashable (it holds a mapping).
    """

    status: BuildStatus
    error_msg: str = ""
    times_built: int = 0
    is_non_deterministic: bool = False
    start_time: int = 0
    stop_time: int = 0
    built_outputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_success(self) -> bool:
        return self.status.is_success


def encode_build_result(result: BuildResult, version: int) -> bytes:
    """The server's reply for a client at `version` (a correct server, not 2.4-2.11's bug)."""
    out = encode_u64(result.status) + encode_text(result.error_msg)
    if version >= SINCE_BUILD_TIMES:
        out += encode_u32(result.times_built, "times_built")
        out += encode_bool(result.is_non_deterministic)
        out += encode_u64(result.start_time) + encode_u64(result.stop_time)
    if version >= SINCE_BUILT_OUTPUTS:
        out += encode_u64(len(result.built_outputs))
        for key in _nix_order(result.built_outputs):
            out += encode_text(key) + encode_text(result.built_outputs[key])
    return out


def decode_build_result(reader: Reader, version: int) -> BuildResult:
    code = reader.read_u64(max_value=U32_MAX)
    try:
        status = BuildStatus(code)
    except ValueError:
        raise RemoteProtocolError(f"unknown build status {code}") from None
    error_msg = reader.read_text(LIMIT_TEXT)
    times_built, is_non_deterministic, start_time, stop_time = 0, False, 0, 0
    if version >= SINCE_BUILD_TIMES:
        times_built = reader.read_u64(max_value=U32_MAX)
        is_non_deterministic = reader.read_bool()
        start_time = reader.read_u64()
        stop_time = reader.read_u64()
    built_outputs: dict[str, str] = {}
    if version >= SINCE_BUILT_OUTPUTS:
        for _ in range(read_count(reader, "built outputs")):
            key = reader.read_text(LIMIT_PATH)
            built_outputs[key] = reader.read_text(LIMIT_TEXT)
    return BuildResult(
        status=status,
        error_msg=error_msg,
        times_built=times_built,
        is_non_deterministic=is_non_deterministic,
        start_time=start_time,
        stop_time=stop_time,
        built_outputs=built_outputs,
    )
