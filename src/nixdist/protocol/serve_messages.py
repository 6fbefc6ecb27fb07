"""``nix-store --serve`` commands 1-9: requests, replies, BuildOptions, BasicDerivation.

Wire formats (nix-protocols.md §3.4-3.7; ``[≥ x]`` marks a field present from negotiated
version x, gated by the ``SINCE_*`` constants of `nixdist.protocol.serve`)::

    1 QueryValidPaths   → u64(1) u64(lock) u64(substitute) strs(paths)   ← strs(valid paths)
    2 QueryPathInfos    → u64(2) strs(paths)
                        ← per valid path: str(path) str(deriver|"") strs(refs)
                            u64(download_size = nar_size) u64(nar_size)
                            [≥ 2.4] str(narHash "sha256:<nix32>") str(ca|"") strs(sigs)
                          then str("")
    3 DumpStorePath     → u64(3) str(path)                               ← the NAR, raw
    4 ImportPaths       → u64(4) <export stream, streamed by the caller>  ← u64(1)
    5 ExportPaths       → u64(5) u64(0) strs(paths)                      ← export stream, raw
    6 BuildPaths        → u64(6) strs(targets) BuildOptions
                        ← u64(0) | u64(status) str(message)
    7 QueryClosure      → u64(7) u64(include_outputs) strs(paths)        ← strs(closure)
    8 BuildDerivation   → u64(8) str(drv_path) BasicDerivation BuildOptions   ← BuildResult
    9 AddToStoreNar     → u64(9) str(path) str(deriver|"") str(narHash base16) strs(refs)
                          u64(registration_time) u64(nar_size) u64(ultimate) strs(sigs)
                          str(ca|"") <exactly nar_size NAR bytes, streamed by the caller>
                        ← u64(1)                                          [needs ≥ 2.5]

    BuildOptions    = u64(max_silent_time) u64(build_timeout) [≥ 2.2] u64(max_log_size)
                      [≥ 2.3] u64(nr_repeats) u64(enforce_determinism) [≥ 2.7] u64(keep_failed)
    BasicDerivation = u64(n) (str(output) str(path) str(hash_algo) str(hash))*n
                      strs(input_srcs) str(platform) str(builder) strs(args)
                      u64(m) (str(key) str(value))*m
    BuildResult     = u64(status) str(error_msg)
                      [≥ 2.3] u64(times_built) u64(is_non_deterministic) u64(start) u64(stop)
                      [≥ 2.6] u64(k) (str(drv_output_id) str(realisation_json))*k

How to use: ``encode_request(request, version)`` gives the bytes of a request (for commands
4 and 9, only the part before the payload the caller then streams); the reply is read with
the decoder for that command (`decode_serve_reply` picks it) through
``maybe_decode(partial(decoder, version=…), buffer)``. The raw replies of commands 3 and 5 are
NAR / export streams for `nixdist.wire`. Each decoder reads exactly its message; for the
server side, `decode_request` reads a command code and its arguments (not the payload).

Encoders write sets in Nix's order (store paths by basename, other strings bytewise), so
their bytes equal what Nix writes; decoders keep the order received. Every count and length
read from the peer has a limit; a store path that does not parse, an unknown status or
command, a zero ``nar_size`` are `RemoteProtocolError`; framing faults are `WireError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, assert_never

from nixdist.errors import LocalProtocolError, ParseError, RemoteProtocolError, WireError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.protocol.serve import (
    SINCE_ADD_TO_STORE_NAR,
    SINCE_PATH_INFO_HASH,
    BuildOptions,
    BuildResult,
    ServeCommand,
    decode_basic_derivation,
    decode_build_options,
    decode_build_result,
    encode_basic_derivation,
    encode_build_options,
    encode_build_result,
    encode_store_paths,
    encode_u32,
    format_version,
    parse_peer_store_path,
    read_store_path,
    read_store_paths,
)
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
    from collections.abc import Callable, Iterable, Mapping

    from nixdist.model.derivation import BasicDerivation

#: The reply of ImportPaths and AddToStoreNar.
SUCCESS: Final = 1
#: BuildPaths' status for success (then no message follows).
BUILD_PATHS_OK: Final = 0
#: ExportPaths' first argument, ignored by the server.
_EXPORT_PATHS_OBSOLETE: Final = 0


def read_optional_path(reader: Reader, store_dir: str) -> StorePath | None:
    text = reader.read_text(LIMIT_PATH)
    return parse_peer_store_path(text, store_dir) if text else None


def read_path_info_hash(reader: Reader) -> Hash:
    text = reader.read_text(LIMIT_PATH)
    try:
        return Hash.parse(text, HashAlgo.SHA256)
    except ParseError as err:
        raise RemoteProtocolError(f"peer sent an invalid NAR hash: {err}") from None


def encode_path_info_fields(info: PathInfo) -> bytes:
    """A path's info after its path, as both protocols send it with a NAR (serve's
    AddToStoreNar, the daemon's AddToStoreNar and QueryPathInfo): deriver, NAR hash (base16),
    references, registration time, NAR size, ultimate, signatures, content address."""
    return (
        encode_text(str(info.deriver) if info.deriver else "")
        + encode_text(info.nar_hash.to_base16())
        + encode_store_paths(info.references)
        + encode_u64(info.registration_time)
        + encode_u64(info.nar_size)
        + encode_bool(info.ultimate)
        + encode_texts(info.sigs)
        + encode_text(info.ca)
    )


def read_path_info_fields(reader: Reader, path: StorePath, store_dir: str = STORE_DIR) -> PathInfo:
    """The inverse of `encode_path_info_fields`, for `path`."""
    deriver = read_optional_path(reader, store_dir)
    nar_hash = read_path_info_hash(reader)
    references = read_store_paths(reader, store_dir)
    registration_time = reader.read_u64()
    nar_size = reader.read_u64()
    ultimate = reader.read_bool()
    sigs = tuple(reader.read_texts(LIMIT_TEXT, LIMIT_COUNT))
    ca = reader.read_text(LIMIT_PATH)
    return PathInfo(
        path=path,
        deriver=deriver,
        nar_hash=nar_hash,
        references=references,
        nar_size=nar_size,
        registration_time=registration_time,
        ultimate=ultimate,
        sigs=sigs,
        ca=ca,
    )


# ---------------------------------------------------------------------------------------
# Requests: each knows its command code, encodes its arguments for a negotiated version,
# and decodes them (the code already read).


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryValidPathsRequest:
    """Which of `paths` are valid? `lock` adds temp GC roots; `substitute` substitutes first."""

    command: ClassVar[ServeCommand] = ServeCommand.QUERY_VALID_PATHS
    paths: frozenset[StorePath]
    lock: bool = False
    substitute: bool = False

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return (
            encode_bool(self.lock) + encode_bool(self.substitute) + encode_store_paths(self.paths)
        )

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> QueryValidPathsRequest:  # noqa: ARG003 - same in every version
        lock = reader.read_bool()
        substitute = reader.read_bool()
        return cls(paths=read_store_paths(reader, store_dir), lock=lock, substitute=substitute)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryPathInfosRequest:
    """Path infos of the valid ones among `paths` (reply: `decode_query_path_infos_reply`)."""

    command: ClassVar[ServeCommand] = ServeCommand.QUERY_PATH_INFOS
    paths: frozenset[StorePath]

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return encode_store_paths(self.paths)

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> QueryPathInfosRequest:  # noqa: ARG003 - same in every version
        return cls(paths=read_store_paths(reader, store_dir))


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpStorePathRequest:
    """The reply is the raw NAR of `path` (self-delimiting; its size is ``nar_size``)."""

    command: ClassVar[ServeCommand] = ServeCommand.DUMP_STORE_PATH
    path: StorePath

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return encode_text(str(self.path))

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> DumpStorePathRequest:  # noqa: ARG003 - same in every version
        return cls(path=read_store_path(reader, store_dir))


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportPathsRequest:
    """Followed by an export stream (`nixdist.wire`), which the caller streams."""

    command: ClassVar[ServeCommand] = ServeCommand.IMPORT_PATHS

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return b""

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> ImportPathsRequest:  # noqa: ARG003 - no arguments
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportPathsRequest:
    """The reply is an export stream of `paths`, dependencies first (gone in Nix 2.35)."""

    command: ClassVar[ServeCommand] = ServeCommand.EXPORT_PATHS
    paths: frozenset[StorePath]

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return encode_u64(_EXPORT_PATHS_OBSOLETE) + encode_store_paths(self.paths)

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> ExportPathsRequest:  # noqa: ARG003 - same in every version
        reader.read_u64()  # obsolete, ignored by Nix
        return cls(paths=read_store_paths(reader, store_dir))


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildPathsRequest:
    """`targets`: ``<drv>``, ``<drv>!out1,out2`` or output paths, in order."""

    command: ClassVar[ServeCommand] = ServeCommand.BUILD_PATHS
    targets: tuple[str, ...]
    options: BuildOptions = field(default_factory=BuildOptions)

    def encode_args(self, version: int) -> bytes:
        return encode_texts(self.targets) + encode_build_options(self.options, version)

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> BuildPathsRequest:  # noqa: ARG003 - targets stay text
        targets = tuple(reader.read_texts(LIMIT_TEXT, LIMIT_COUNT))
        return cls(targets=targets, options=decode_build_options(reader, version))


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryClosureRequest:
    command: ClassVar[ServeCommand] = ServeCommand.QUERY_CLOSURE
    paths: frozenset[StorePath]
    include_outputs: bool = False

    def encode_args(self, version: int) -> bytes:  # noqa: ARG002 - same in every version
        return encode_bool(self.include_outputs) + encode_store_paths(self.paths)

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> QueryClosureRequest:  # noqa: ARG003 - same in every version
        include_outputs = reader.read_bool()
        return cls(paths=read_store_paths(reader, store_dir), include_outputs=include_outputs)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildDerivationRequest:
    """Build `drv` (its name comes from `drv_path`, which need not exist remotely)."""

    command: ClassVar[ServeCommand] = ServeCommand.BUILD_DERIVATION
    drv_path: StorePath
    drv: BasicDerivation
    options: BuildOptions = field(default_factory=BuildOptions)

    def encode_args(self, version: int) -> bytes:
        if not self.drv_path.is_derivation:
            raise LocalProtocolError(f"{self.drv_path} is not a .drv path")
        return (
            encode_text(str(self.drv_path))
            + encode_basic_derivation(self.drv)
            + encode_build_options(self.options, version)
        )

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> BuildDerivationRequest:
        drv_path = read_store_path(reader, store_dir)
        if not drv_path.is_derivation:
            raise RemoteProtocolError(f"BuildDerivation of {drv_path}, which is not a .drv")
        drv = decode_basic_derivation(reader, drv_path.drv_name, store_dir)
        return cls(drv_path=drv_path, drv=drv, options=decode_build_options(reader, version))


@dataclass(frozen=True, slots=True, kw_only=True)
class AddToStoreNarRequest:
    """Followed by exactly ``info.nar_size`` bytes of NAR, which the caller streams.

    Needs serve 2.5 (`SINCE_ADD_TO_STORE_NAR`); older servers take ImportPaths.
    """

    command: ClassVar[ServeCommand] = ServeCommand.ADD_TO_STORE_NAR
    info: PathInfo

    def encode_args(self, version: int) -> bytes:
        if version < SINCE_ADD_TO_STORE_NAR:
            raise LocalProtocolError(
                f"AddToStoreNar needs serve protocol 2.5, the server speaks "
                f"{format_version(version)}: use ImportPaths"
            )
        info = self.info
        if info.nar_size == 0:
            raise LocalProtocolError(f"AddToStoreNar of {info.path} with nar_size 0")
        return encode_text(str(info.path)) + encode_path_info_fields(info)

    @classmethod
    def decode_args(cls, reader: Reader, version: int, store_dir: str) -> AddToStoreNarRequest:  # noqa: ARG003 - same in every version
        info = read_path_info_fields(reader, read_store_path(reader, store_dir), store_dir)
        if info.nar_size == 0:
            raise RemoteProtocolError(f"AddToStoreNar of {info.path} with nar_size 0")
        return cls(info=info)


ServeRequest = (
    QueryValidPathsRequest
    | QueryPathInfosRequest
    | DumpStorePathRequest
    | ImportPathsRequest
    | ExportPathsRequest
    | BuildPathsRequest
    | QueryClosureRequest
    | BuildDerivationRequest
    | AddToStoreNarRequest
)

_REQUEST_TYPES: Final[Mapping[ServeCommand, Callable[[Reader, int, str], ServeRequest]]] = {
    cls.command: cls.decode_args
    for cls in (
        QueryValidPathsRequest,
        QueryPathInfosRequest,
        DumpStorePathRequest,
        ImportPathsRequest,
        ExportPathsRequest,
        BuildPathsRequest,
        QueryClosureRequest,
        BuildDerivationRequest,
        AddToStoreNarRequest,
    )
}


def encode_request(request: ServeRequest, version: int) -> bytes:
    """The command code and arguments (for 4 and 9: everything before the payload)."""
    return encode_u64(request.command) + request.encode_args(version)


def decode_request(reader: Reader, version: int, store_dir: str = STORE_DIR) -> ServeRequest:
    """Read one command (server side); the payloads of 4 and 9 are left for the caller."""
    code = reader.read_u64()
    try:
        decode_args = _REQUEST_TYPES[ServeCommand(code)]
    except ValueError:
        raise RemoteProtocolError(f"unknown serve command {code}") from None
    return decode_args(reader, version, store_dir)


def encode_add_to_store_nar_header(info: PathInfo, version: int = SINCE_ADD_TO_STORE_NAR) -> bytes:
    """Command 9 up to the NAR: the caller then sends exactly ``info.nar_size`` bytes."""
    return encode_request(AddToStoreNarRequest(info=info), version)


def decode_add_to_store_nar_header(reader: Reader, store_dir: str = STORE_DIR) -> PathInfo:
    """Read command 9's code and header; exactly ``nar_size`` NAR bytes follow."""
    code = reader.read_u64()
    if code != ServeCommand.ADD_TO_STORE_NAR:
        raise RemoteProtocolError(f"expected command {ServeCommand.ADD_TO_STORE_NAR}, got {code}")
    return AddToStoreNarRequest.decode_args(reader, SINCE_ADD_TO_STORE_NAR, store_dir).info


# ---------------------------------------------------------------------------------------
# Replies


def encode_query_valid_paths_reply(paths: Iterable[StorePath]) -> bytes:
    return encode_store_paths(paths)


def decode_query_valid_paths_reply(
    reader: Reader, store_dir: str = STORE_DIR
) -> frozenset[StorePath]:
    return read_store_paths(reader, store_dir)


encode_query_closure_reply = encode_query_valid_paths_reply
decode_query_closure_reply = decode_query_valid_paths_reply


def encode_query_path_infos_reply(infos: Iterable[PathInfo], version: int) -> bytes:
    """One record per valid path, then ``str("")``. Fields before 2.4 lack the hash."""
    out = bytearray()
    for info in infos:
        out += encode_text(str(info.path))
        out += encode_text(str(info.deriver) if info.deriver else "")
        out += encode_store_paths(info.references)
        out += encode_u64(info.nar_size) + encode_u64(info.nar_size)  # download size = NAR size
        if version >= SINCE_PATH_INFO_HASH:
            out += encode_text(info.nar_hash.render())
            out += encode_text(info.ca)
            out += encode_texts(info.sigs)
    out += encode_text("")
    return bytes(out)


def decode_query_path_infos_reply(
    reader: Reader, version: int, store_dir: str = STORE_DIR
) -> tuple[PathInfo, ...]:
    """The infos in the order sent. Needs 2.4 (no NAR hash before; Nix 2.8 needs it too)."""
    if version < SINCE_PATH_INFO_HASH:
        raise LocalProtocolError(
            f"QueryPathInfos replies carry no NAR hash before serve protocol 2.4 "
            f"(negotiated {format_version(version)})"
        )
    infos: list[PathInfo] = []
    while text := reader.read_text(LIMIT_PATH):
        if len(infos) >= LIMIT_COUNT:
            raise WireError(f"more than {LIMIT_COUNT} path infos in one reply")
        path = parse_peer_store_path(text, store_dir)
        deriver = read_optional_path(reader, store_dir)
        references = read_store_paths(reader, store_dir)
        reader.read_u64()  # download size, always the NAR size
        nar_size = reader.read_u64()
        nar_hash = read_path_info_hash(reader)
        ca = reader.read_text(LIMIT_PATH)
        sigs = tuple(reader.read_texts(LIMIT_TEXT, LIMIT_COUNT))
        infos.append(
            PathInfo(
                path=path,
                deriver=deriver,
                nar_hash=nar_hash,
                references=references,
                nar_size=nar_size,
                ca=ca,
                sigs=sigs,
            )
        )
    return tuple(infos)


def encode_success_reply() -> bytes:
    """The reply of ImportPaths (4) and AddToStoreNar (9)."""
    return encode_u64(SUCCESS)


def decode_success_reply(reader: Reader) -> None:
    value = reader.read_u64()
    if value != SUCCESS:
        raise RemoteProtocolError(f"expected the success reply {SUCCESS}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildPathsResult:
    """The reply to BuildPaths: `status` is Nix's exit status (100, 101, 1 …), 0 on success.

    `error_msg` may contain ANSI colour codes, as Nix prints it.
    """

    status: int
    error_msg: str = ""

    @property
    def is_success(self) -> bool:
        return self.status == BUILD_PATHS_OK


def encode_build_paths_reply(result: BuildPathsResult) -> bytes:
    if result.is_success:
        return encode_u64(BUILD_PATHS_OK)
    return encode_u32(result.status, "status") + encode_text(result.error_msg)


def decode_build_paths_reply(reader: Reader) -> BuildPathsResult:
    status = reader.read_u64(max_value=U32_MAX)
    if status == BUILD_PATHS_OK:
        return BuildPathsResult(status=status)
    return BuildPathsResult(status=status, error_msg=reader.read_text(LIMIT_TEXT))


ServeReply = frozenset[StorePath] | tuple[PathInfo, ...] | BuildPathsResult | BuildResult | None


def encode_serve_reply(request: ServeRequest, reply: ServeReply, version: int) -> bytes:
    """The reply to `request` (server side). Commands 3 and 5 have raw replies: an error."""
    match request, reply:
        case ((QueryValidPathsRequest() | QueryClosureRequest()), frozenset()):
            return encode_store_paths(reply)
        case QueryPathInfosRequest(), tuple():
            return encode_query_path_infos_reply(reply, version)
        case ((ImportPathsRequest() | AddToStoreNarRequest()), None):
            return encode_success_reply()
        case BuildPathsRequest(), BuildPathsResult():
            return encode_build_paths_reply(reply)
        case BuildDerivationRequest(), BuildResult():
            return encode_build_result(reply, version)
        case _:
            raise LocalProtocolError(
                f"no structured reply {type(reply).__name__} for {request.command.name}"
            )


def decode_serve_reply(
    reader: Reader, request: ServeRequest, version: int, store_dir: str = STORE_DIR
) -> ServeReply:
    """Read the reply to `request` (for replaying sessions). 3 and 5 are raw streams: an error."""
    match request:
        case QueryValidPathsRequest() | QueryClosureRequest():
            return read_store_paths(reader, store_dir)
        case QueryPathInfosRequest():
            return decode_query_path_infos_reply(reader, version, store_dir)
        case ImportPathsRequest() | AddToStoreNarRequest():
            decode_success_reply(reader)
            return None
        case BuildPathsRequest():
            return decode_build_paths_reply(reader)
        case BuildDerivationRequest():
            return decode_build_result(reader, version)
        case DumpStorePathRequest() | ExportPathsRequest():
            raise LocalProtocolError(
                f"the reply to {request.command.name} is a raw stream: read it with nixdist.wire"
            )
        case _:  # pragma: no cover - exhaustiveness
            assert_never(request)
