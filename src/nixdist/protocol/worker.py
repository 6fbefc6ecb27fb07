"""The worker protocol (``nix-daemon``; ``ssh-ng://`` stores): handshake, log stream, operations.

Spec: nix-protocols.md §6.2; source ``NixOS/nix@2.8.0:src/libstore/{daemon,remote-store}.cc``
and ``NixOS/nix@2.34.8:src/libstore/worker-protocol{,-connection}.cc``. Golden vectors:
tests/golden/worker/, recorded between real Nix hooks and real ``nix-daemon --stdio``.

Theory of operation
-------------------

One session is one ``nix-daemon --stdio`` (over ssh, or a local pipe). Unlike the serve
protocol, logs and errors travel in band: every operation's reply is preceded by a *log
stream* of messages that ends with ``STDERR_LAST`` (then the result) or ``STDERR_ERROR``
(then nothing: the operation failed, the session goes on)::

    client                                               daemon
      u64(WORKER_MAGIC_1) u64(client version)      ──▶
                                                   ◀──  u64(WORKER_MAGIC_2) u64(daemon version)
      [≥ 1.38] strs(features)                      ──▶  ◀── [≥ 1.38] strs(features)
      u64(0) u64(0)   (obsolete CPU affinity, reserve-space)
                                                   ◀──  [≥ 1.33] str(Nix version)
                                                        [≥ 1.35] u64(trusted: 0 unknown, 1, 2)
                                                   ◀──  log stream
      u64(op) arguments [framed NAR]               ──▶
                                                   ◀──  log stream, then the result

Versions are ``major << 8 | minor``, major 1; both sides use the minimum of the two. We
announce 1.38 (Nix 2.24 - 2.35) with no features, and need 1.32 (Nix 2.4) or newer: every
field older than that is always present here, and the ``SINCE_*`` constants gate the rest.
Announcing no features keeps 2.35 daemons on the 1.38 formats (their
``realisation-with-path-not-hash`` feature changes BuildResult's built outputs).

=====  ===========  =======================================================================
minor  Nix          adds (as used here)
=====  ===========  =======================================================================
32     2.4          AddMultipleToStore; the oldest daemon spoken to
33     2.5          the daemon's Nix version in the handshake (`SINCE_NIX_VERSION`)
34     2.8          BuildPathsWithResults
35     2.15         whether the daemon trusts us, in the handshake (`SINCE_TRUST`)
37     2.20         CPU times in BuildResult (`SINCE_CPU_TIMES`)
38     2.24         feature sets in the handshake (`SINCE_FEATURES`)
=====  ===========  =======================================================================

Build logs arrive as ``STDERR_RESULT`` messages of type 101 (a build log line) and the rest of
the log stream as Nix's own activities: they are decoded into the ``@nix`` message types of
`nixdist.protocol.logjson`, which is what a hook forwards to Nix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from nixdist.errors import RemoteProtocolError, WireError
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.protocol.logjson import Msg, Result, Start, Stop, Verbosity
from nixdist.protocol.serve import (
    WORKER_MAGIC_2,
    BuildResult,
    BuildStatus,
    encode_basic_derivation,
    encode_store_paths,
    format_version,
    parse_peer_store_path,
    read_count,
    read_store_paths,
)
from nixdist.protocol.serve_messages import encode_path_info_fields, read_path_info_fields
from nixdist.wire.primitives import (
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
    from collections.abc import Iterable

    from nixdist.model.derivation import BasicDerivation
    from nixdist.model.path_info import PathInfo
    from nixdist.protocol.logjson import Field

WORKER_MAGIC_1: Final = 0x6E697863  # client greeting
# WORKER_MAGIC_2, the daemon's greeting, is `nixdist.protocol.serve`'s too (it tells a daemon
# answering in the place of nix-store --serve); versions read as serve's (`format_version`).

PROTOCOL_VERSION: Final = 0x126  # what we announce: 1.38
MIN_VERSION: Final = 0x120  # 1.32, Nix 2.4
SUPPORTED_MAJOR: Final = 0x100

SINCE_NIX_VERSION: Final = 0x121
SINCE_TRUST: Final = 0x123
SINCE_CPU_TIMES: Final = 0x125
SINCE_FEATURES: Final = 0x126

_ANSI_SGR: Final = re.compile(r"\x1b\[[0-9;]*m")

#: Frames of a framed stream (the NAR of AddToStoreNar) are at most this long.
FRAME_SIZE: Final = 64 << 10


class Op(IntEnum):
    """The operations spoken here (``WorkerProto::Op``)."""

    QUERY_PATH_INFO = 26
    QUERY_VALID_PATHS = 31
    BUILD_DERIVATION = 36
    NAR_FROM_PATH = 38
    ADD_TO_STORE_NAR = 39
    BUILD_PATHS_WITH_RESULTS = 46


class Stderr(IntEnum):
    """The message codes of a log stream."""

    WRITE = 0x64617416
    READ = 0x64617461
    ERROR = 0x63787470
    NEXT = 0x6F6C6D67
    START_ACTIVITY = 0x53545254
    STOP_ACTIVITY = 0x53544F50
    RESULT = 0x52534C54
    LAST = 0x616C7473


class Trust(IntEnum):
    """What the daemon says about us (``TrustedFlag``; 0 when it does not say)."""

    UNKNOWN = 0
    TRUSTED = 1
    NOT_TRUSTED = 2


class BuildMode(IntEnum):
    NORMAL = 0
    REPAIR = 1
    CHECK = 2


# ---------------------------------------------------------------------------------------
# Handshake


def encode_client_hello(version: int = PROTOCOL_VERSION) -> bytes:
    return encode_u64(WORKER_MAGIC_1) + encode_u64(version)


def decode_server_hello(reader: Reader) -> int:
    """The daemon's version (checked: major 1, at least `MIN_VERSION`)."""
    magic = reader.read_u64()
    if magic != WORKER_MAGIC_2:
        raise RemoteProtocolError(
            f"not a Nix daemon: expected the worker protocol's greeting {WORKER_MAGIC_2:#x}, "
            f"got {magic:#x}"
        )
    version = reader.read_u64(max_value=U32_MAX)
    if version & 0xFF00 != SUPPORTED_MAJOR or version < MIN_VERSION:
        raise RemoteProtocolError(
            f"the daemon speaks worker protocol {format_version(version)}; nixdist needs 1.32 "
            "or newer (Nix 2.4+)"
        )
    return version


def negotiated_version(client: int, server: int) -> int:
    return min(client, server)


def encode_client_options(version: int) -> bytes:
    """What the client sends once the version is known: features (none), then the two
    obsolete words (CPU affinity: none; reserve space: no)."""
    features = encode_texts(()) if version >= SINCE_FEATURES else b""
    return features + encode_u64(0) + encode_u64(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonInfo:
    """What the daemon says about itself after the greeting (before its first log stream)."""

    nix_version: str | None = None
    trust: Trust = Trust.UNKNOWN
    features: tuple[str, ...] = ()


def decode_daemon_info(reader: Reader, version: int) -> DaemonInfo:
    features = tuple(reader.read_texts(LIMIT_PATH, 1024)) if version >= SINCE_FEATURES else ()
    nix_version = reader.read_text(LIMIT_PATH) if version >= SINCE_NIX_VERSION else None
    trust = Trust.UNKNOWN
    if version >= SINCE_TRUST:
        code = reader.read_u64()
        try:
            trust = Trust(code)
        except ValueError:
            raise RemoteProtocolError(f"the daemon sent an unknown trust value {code}") from None
    return DaemonInfo(nix_version=nix_version, trust=trust, features=features)


# ---------------------------------------------------------------------------------------
# The log stream


@dataclass(frozen=True, slots=True, kw_only=True)
class Last:
    """The log stream ended; the operation's result follows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonFailure:
    """The operation failed (``STDERR_ERROR``); nothing follows it."""

    message: str
    traces: tuple[str, ...] = ()

    def render(self) -> str:
        """The message with its traces, one per line, as plain text: the daemon marks up
        parts for a terminal (ANSI colours), which Nix drops when not on one."""
        text = self.message + "".join(f"\n  … {trace}" for trace in self.traces)
        return _ANSI_SGR.sub("", text)


StderrMessage = Last | DaemonFailure | Msg | Start | Stop | Result


def _read_fields(reader: Reader) -> tuple[Field, ...]:
    fields: list[Field] = []
    for _ in range(read_count(reader, "activity fields")):
        kind = reader.read_u64()
        if kind == 0:
            fields.append(reader.read_u64())
        elif kind == 1:
            fields.append(reader.read_text(LIMIT_TEXT))
        else:
            raise RemoteProtocolError(f"unknown activity field type {kind}")
    return tuple(fields)


def encode_fields(fields: Iterable[Field]) -> bytes:
    out = bytearray()
    items = list(fields)
    out += encode_u64(len(items))
    for item in items:
        if isinstance(item, int):
            out += encode_u64(0) + encode_u64(item)
        else:
            out += encode_u64(1) + encode_text(item)
    return bytes(out)


def _read_failure(reader: Reader) -> DaemonFailure:
    """``STDERR_ERROR``'s body (1.26+, which every daemon spoken to has)."""
    reader.expect(b"Error", "error type")
    reader.read_u64()  # level
    reader.read_text(LIMIT_PATH)  # name, unused since 2.4
    message = reader.read_text(LIMIT_TEXT)
    if reader.read_u64() != 0:
        raise RemoteProtocolError("the daemon sent an error with a position")
    traces: list[str] = []
    for _ in range(read_count(reader, "error traces")):
        if reader.read_u64() != 0:
            raise RemoteProtocolError("the daemon sent an error trace with a position")
        traces.append(reader.read_text(LIMIT_TEXT))
    return DaemonFailure(message=message, traces=tuple(traces))


def decode_stderr(reader: Reader) -> StderrMessage:
    """One message of a log stream."""
    code = reader.read_u64()
    match code:
        case Stderr.LAST:
            return Last()
        case Stderr.ERROR:
            return _read_failure(reader)
        case Stderr.NEXT:
            # A log line without a level: Nix's client shows it as an error-level message.
            return Msg(level=Verbosity.ERROR, msg=reader.read_text(LIMIT_TEXT).rstrip("\n"))
        case Stderr.START_ACTIVITY:
            activity = reader.read_u64()
            level = reader.read_u64(max_value=U32_MAX)
            kind = reader.read_u64(max_value=U32_MAX)
            text = reader.read_text(LIMIT_TEXT)
            fields = _read_fields(reader)
            parent = reader.read_u64()
            return Start(
                id=activity, level=level, type=kind, text=text, fields=fields, parent=parent
            )
        case Stderr.STOP_ACTIVITY:
            return Stop(id=reader.read_u64())
        case Stderr.RESULT:
            activity = reader.read_u64()
            kind = reader.read_u64(max_value=U32_MAX)
            return Result(id=activity, type=kind, fields=_read_fields(reader))
        case Stderr.READ | Stderr.WRITE:
            raise RemoteProtocolError(
                f"the daemon asked for a data transfer ({code:#x}) no operation here uses"
            )
        case _:
            raise RemoteProtocolError(f"unknown log stream message {code:#x} from the daemon")


def encode_stderr(message: StderrMessage) -> bytes:
    """A daemon's message (for tests and fakes: the inverse of `decode_stderr`)."""
    match message:
        case Last():
            return encode_u64(Stderr.LAST)
        case DaemonFailure(message=text, traces=traces):
            out = encode_u64(Stderr.ERROR) + encode_text("Error") + encode_u64(0)
            out += encode_text("Error") + encode_text(text) + encode_u64(0)
            out += encode_u64(len(traces))
            return out + b"".join(encode_u64(0) + encode_text(t) for t in traces)
        case Msg(msg=text):
            return encode_u64(Stderr.NEXT) + encode_text(text + "\n")
        case Start():
            return (
                encode_u64(Stderr.START_ACTIVITY)
                + encode_u64(message.id)
                + encode_u64(message.level)
                + encode_u64(message.type)
                + encode_text(message.text)
                + encode_fields(message.fields)
                + encode_u64(message.parent or 0)
            )
        case Stop(id=activity):
            return encode_u64(Stderr.STOP_ACTIVITY) + encode_u64(activity)
        case Result():
            return (
                encode_u64(Stderr.RESULT)
                + encode_u64(message.id)
                + encode_u64(message.type)
                + encode_fields(message.fields)
            )


# ---------------------------------------------------------------------------------------
# Framed streams (nix-protocols.md §4.7)


def encode_frame(data: bytes | memoryview) -> bytes:
    """One frame; an empty one ends the stream."""
    return encode_u64(len(data)) + bytes(data)


def encode_frames(data: bytes) -> bytes:
    """`data` as frames of at most `FRAME_SIZE` bytes (none for no data)."""
    view = memoryview(data)
    return b"".join(
        encode_frame(view[start : start + FRAME_SIZE]) for start in range(0, len(view), FRAME_SIZE)
    )


END_OF_FRAMES: Final = encode_u64(0)


# ---------------------------------------------------------------------------------------
# Operations: requests, then the result that follows ``STDERR_LAST``


def encode_query_valid_paths(paths: Iterable[StorePath], *, substitute: bool) -> bytes:
    return encode_u64(Op.QUERY_VALID_PATHS) + encode_store_paths(paths) + encode_bool(substitute)


def decode_valid_paths(reader: Reader, store_dir: str = STORE_DIR) -> frozenset[StorePath]:
    return read_store_paths(reader, store_dir)


def encode_query_path_info(path: StorePath) -> bytes:
    return encode_u64(Op.QUERY_PATH_INFO) + encode_text(str(path))


def decode_path_info(
    reader: Reader, path: StorePath, store_dir: str = STORE_DIR
) -> PathInfo | None:
    """QueryPathInfo's result: None when `path` is not valid there."""
    if not reader.read_bool():
        return None
    return read_path_info_fields(reader, path, store_dir)


def encode_path_info(info: PathInfo | None) -> bytes:
    """QueryPathInfo's result, as a daemon sends it (the inverse of `decode_path_info`)."""
    if info is None:
        return encode_u64(0)
    return encode_u64(1) + encode_path_info_fields(info)


def encode_nar_from_path(path: StorePath) -> bytes:
    """NarFromPath: the NAR follows ``STDERR_LAST``, unframed (it delimits itself)."""
    return encode_u64(Op.NAR_FROM_PATH) + encode_text(str(path))


def encode_add_to_store_nar(info: PathInfo, *, check_sigs: bool) -> bytes:
    """AddToStoreNar up to the NAR, which follows as a framed stream (`encode_frame`).

    Without `check_sigs` a trusting daemon adds the path unsigned (as Nix's ``copyPaths``
    with ``NoCheckSigs``); an untrusting one checks them whatever we say.
    """
    return (
        encode_u64(Op.ADD_TO_STORE_NAR)
        + encode_text(str(info.path))
        + encode_path_info_fields(info)
        + encode_u64(0)  # repair: no
        + encode_bool(not check_sigs)
    )


def encode_build_derivation(drv_path: StorePath, drv: BasicDerivation) -> bytes:
    return (
        encode_u64(Op.BUILD_DERIVATION)
        + encode_text(str(drv_path))
        + encode_basic_derivation(drv)
        + encode_u64(BuildMode.NORMAL)
    )


def encode_build_paths_with_results(drv_paths: Iterable[StorePath]) -> bytes:
    """Build every output of each derivation (``drv!*``, the form of protocol 1.30+)."""
    return (
        encode_u64(Op.BUILD_PATHS_WITH_RESULTS)
        + encode_texts(sorted(f"{path}!*" for path in drv_paths))
        + encode_u64(BuildMode.NORMAL)
    )


def _read_optional_micros(reader: Reader) -> int | None:
    tag = reader.read_u64()
    if tag == 0:
        return None
    if tag != 1:
        raise RemoteProtocolError(f"invalid optional tag {tag} in a build result")
    return reader.read_u64()


def encode_build_result(result: BuildResult, version: int) -> bytes:
    """BuildDerivation's result, as a daemon sends it (no CPU times)."""
    out = encode_u64(result.status) + encode_text(result.error_msg)
    out += encode_u64(result.times_built) + encode_bool(result.is_non_deterministic)
    out += encode_u64(result.start_time) + encode_u64(result.stop_time)
    if version >= SINCE_CPU_TIMES:
        out += encode_u64(0) + encode_u64(0)
    out += encode_u64(len(result.built_outputs))
    for key in sorted(result.built_outputs):
        out += encode_text(key) + encode_text(result.built_outputs[key])
    return out


def decode_build_result(reader: Reader, version: int) -> BuildResult:
    """BuildDerivation's result (fields of 1.28, 1.29 and 1.37)."""
    code = reader.read_u64(max_value=U32_MAX)
    try:
        status = BuildStatus(code)
    except ValueError:
        raise RemoteProtocolError(f"unknown build status {code}") from None
    error_msg = reader.read_text(LIMIT_TEXT)
    times_built = reader.read_u64(max_value=U32_MAX)
    is_non_deterministic = reader.read_bool()
    start_time = reader.read_u64()
    stop_time = reader.read_u64()
    if version >= SINCE_CPU_TIMES:
        _read_optional_micros(reader)  # user CPU time
        _read_optional_micros(reader)  # system CPU time
    built_outputs: dict[str, str] = {}
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


def decode_build_paths_results(
    reader: Reader, version: int, store_dir: str = STORE_DIR
) -> dict[StorePath, BuildResult]:
    """BuildPathsWithResults' result: each derivation's (``drv!*``) build result."""
    results: dict[StorePath, BuildResult] = {}
    for _ in range(read_count(reader, "build results")):
        derived = reader.read_text(LIMIT_PATH)
        drv, bang, _outputs = derived.partition("!")
        if not bang:
            raise WireError(f"build result for {derived!r}, which names no outputs")
        results[parse_peer_store_path(drv, store_dir)] = decode_build_result(reader, version)
    return results
