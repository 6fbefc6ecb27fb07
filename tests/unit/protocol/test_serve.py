"""``nix-store --serve``: handshake, versions, commands 1-9, shared blocks, errors, sessions.

Expected bytes are built by hand from nix-protocols.md §3-4 (literal hex, or the tiny
`u64`/`s` helpers below, which are independent of the code under test).
"""

from __future__ import annotations

import dataclasses
import struct
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import LocalProtocolError, RemoteProtocolError, WireError
from nixdist.model.derivation import BasicDerivation, DerivationOutput
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.nixbase32 import ALPHABET
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.protocol import serve_messages
from nixdist.protocol.serve import (
    PROTOCOL_VERSION,
    SERVE_MAGIC_1,
    SERVE_MAGIC_2,
    BuildOptions,
    BuildResult,
    BuildStatus,
    ServeCommand,
    ServeGreetingError,
    decode_basic_derivation,
    decode_build_options,
    decode_build_result,
    decode_client_hello,
    decode_server_hello,
    encode_basic_derivation,
    encode_build_options,
    encode_build_result,
    encode_client_hello,
    encode_server_hello,
    format_version,
    negotiated_version,
    version_major,
    version_minor,
)
from nixdist.protocol.serve_messages import (
    AddToStoreNarRequest,
    BuildDerivationRequest,
    BuildPathsRequest,
    BuildPathsResult,
    DumpStorePathRequest,
    ExportPathsRequest,
    ImportPathsRequest,
    QueryClosureRequest,
    QueryPathInfosRequest,
    QueryValidPathsRequest,
    ServeRequest,
    decode_add_to_store_nar_header,
    decode_build_paths_reply,
    decode_query_path_infos_reply,
    decode_query_valid_paths_reply,
    decode_request,
    decode_serve_reply,
    decode_success_reply,
    encode_add_to_store_nar_header,
    encode_build_paths_reply,
    encode_query_path_infos_reply,
    encode_query_valid_paths_reply,
    encode_request,
    encode_serve_reply,
    encode_success_reply,
)
from nixdist.wire.primitives import LIMIT_COUNT, Reader, maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def s(text: str) -> bytes:
    data = text.encode()
    return u64(len(data)) + data + bytes(-len(data) % 8)


def ss(*texts: str) -> bytes:
    return u64(len(texts)) + b"".join(s(t) for t in texts)


def check_incremental(decode: Callable[[Reader], object], data: bytes, value: object) -> None:
    """Every proper prefix needs more data; the whole decodes to `value`; extra is left over."""
    for cut in range(len(data)):
        assert maybe_decode(decode, data[:cut]) is None, cut
    assert maybe_decode(decode, data) == (value, len(data))
    assert maybe_decode(decode, data + b"\x07trailing") == (value, len(data))
    reader = Reader(data)
    assert decode(reader) == value
    reader.check_end()


A = "/nix/store/" + "a" * 32 + "-a"
B = "/nix/store/" + "0" * 32 + "-b"  # sorts before A: "0" < "a"
DRV = "/nix/store/" + "d" * 32 + "-hello.drv"
PA, PB, PDRV = StorePath.parse(A), StorePath.parse(B), StorePath.parse(DRV)
NAR_HASH = Hash.of(HashAlgo.SHA256, b"nar")

# ---------------------------------------------------------------------------------------
# Handshake and versions


def test_hello_hex() -> None:
    assert encode_client_hello() == bytes.fromhex("eb9d0c39000000000702000000000000")
    assert encode_server_hello() == bytes.fromhex("cbee5254000000000702000000000000")
    assert (SERVE_MAGIC_1, SERVE_MAGIC_2, PROTOCOL_VERSION) == (0x390C9DEB, 0x5452EECB, 0x207)
    check_incremental(decode_client_hello, encode_client_hello(0x205), 0x205)
    check_incremental(decode_server_hello, encode_server_hello(0x208), 0x208)


def test_versions() -> None:
    assert (version_major(0x207), version_minor(0x207), format_version(0x207)) == (2, 7, "2.7")
    assert negotiated_version(0x207, 0x205) == 0x205
    assert negotiated_version(0x204, 0x208) == 0x204
    for bad in (0x107, 0x307, 0x10207, 0x7):
        with pytest.raises(RemoteProtocolError, match="unsupported"):
            negotiated_version(PROTOCOL_VERSION, bad)
        with pytest.raises(RemoteProtocolError, match="unsupported"):
            negotiated_version(bad, PROTOCOL_VERSION)


@pytest.mark.parametrize(
    ("received", "shown"),
    [
        (
            b"Welcome to Ubuntu 22.04.3 LTS\n\n * Documentation: https://help.ubuntu.com\n",
            "'Welcome to Ubuntu 22.04.3 LTS",
        ),
        (b"hello from .bashrc\n" + encode_server_hello(), "'hello from .bashrc"),
        (b"Wel", "'Wel'"),  # fails before 8 bytes: the prefix already differs
        (b"\x00\x01\x02\x03\xff\xfe\xfd\xfc", "00 01 02 03 ff fe fd fc"),
    ],
)
def test_bad_server_magic_is_shown_in_words(received: bytes, shown: str) -> None:
    with pytest.raises(ServeGreetingError) as info:
        maybe_decode(decode_server_hello, received)
    message = str(info.value)
    assert shown in message
    assert "stdout" in message
    assert ".bashrc" in message
    assert info.value.received == received
    assert isinstance(info.value, RemoteProtocolError)


def test_greeting_error_variants() -> None:
    assert "closed the connection before" in str(ServeGreetingError(b"", host="b1"))
    assert "'b1'" in str(ServeGreetingError(b"", host="b1"))
    assert "nix-daemon protocol" in str(ServeGreetingError(bytes.fromhex("6f69786400000000")))
    assert "then the connection closed" in str(ServeGreetingError(b"bash: x\n", eof=True))
    long = str(ServeGreetingError(b"x" * 1000))
    assert "…" in long
    assert len(long) < 800


def test_partial_magic_waits() -> None:
    hello = encode_server_hello()
    for cut in range(len(hello)):
        assert maybe_decode(decode_server_hello, hello[:cut]) is None
    with pytest.raises(WireError, match="truncated"):
        decode_server_hello(Reader(hello[:5]))


def test_bad_server_version() -> None:
    with pytest.raises(RemoteProtocolError, match=r"unsupported .* 0x300"):
        maybe_decode(decode_server_hello, u64(SERVE_MAGIC_2) + u64(0x300))
    with pytest.raises(WireError, match="larger than"):
        maybe_decode(decode_server_hello, u64(SERVE_MAGIC_2) + u64(1 << 32))


def test_bad_client_hello() -> None:
    with pytest.raises(RemoteProtocolError, match="mismatch"):
        maybe_decode(decode_client_hello, u64(SERVE_MAGIC_2) + u64(0x207))
    with pytest.raises(RemoteProtocolError, match="unsupported"):
        maybe_decode(decode_client_hello, u64(SERVE_MAGIC_1) + u64(0x100))


def test_enums() -> None:
    assert [int(c) for c in ServeCommand] == list(range(1, 10))
    assert {s for s in BuildStatus if s.is_success} == {
        BuildStatus.BUILT,
        BuildStatus.SUBSTITUTED,
        BuildStatus.ALREADY_VALID,
        BuildStatus.RESOLVES_TO_ALREADY_VALID,
    }
    assert int(BuildStatus.NO_SUBSTITUTERS) == 14


# ---------------------------------------------------------------------------------------
# BuildOptions


OPTIONS = BuildOptions(
    max_silent_time=1, build_timeout=2, max_log_size=3, nr_repeats=4, keep_failed=True
)


@pytest.mark.parametrize(
    ("version", "hex_", "decoded"),
    [
        (0x201, ("0100000000000000" "0200000000000000"),
         BuildOptions(max_silent_time=1, build_timeout=2)),
        (0x202, ("0100000000000000" "0200000000000000" "0300000000000000"),
         BuildOptions(max_silent_time=1, build_timeout=2, max_log_size=3)),
        (0x206, ("0100000000000000" "0200000000000000" "0300000000000000"
                "0400000000000000" "0100000000000000"),
         BuildOptions(max_silent_time=1, build_timeout=2, max_log_size=3, nr_repeats=4)),
        (0x207, ("0100000000000000" "0200000000000000" "0300000000000000"
                "0400000000000000" "0100000000000000" "0100000000000000"), OPTIONS),
    ],
)  # fmt: skip
def test_build_options_hex(version: int, hex_: str, decoded: BuildOptions) -> None:
    data = encode_build_options(OPTIONS, version)
    assert data.hex() == hex_
    check_incremental(partial(decode_build_options, version=version), data, decoded)


def test_build_options_defaults_as_nix_28_sends_them() -> None:
    assert encode_build_options(BuildOptions(), 0x207) == (
        u64(0) + u64(0) + u64(0) + u64(0) + u64(1) + u64(0)
    )


def test_build_options_limits() -> None:
    with pytest.raises(LocalProtocolError, match="32 bits"):
        encode_build_options(BuildOptions(build_timeout=1 << 32), 0x207)
    with pytest.raises(WireError, match="larger than"):
        decode_build_options(Reader(u64(1 << 32) + u64(0)), 0x201)
    bad_bool = u64(0) * 4 + u64(2) + u64(0)
    with pytest.raises(WireError, match="neither 0 nor 1"):
        decode_build_options(Reader(bad_bool), 0x207)


# ---------------------------------------------------------------------------------------
# BasicDerivation


def basic(**changes: object) -> BasicDerivation:
    fields: dict[str, object] = {
        "name": "hello",
        "outputs": {"out": DerivationOutput(path=A)},
        "input_srcs": (B,),
        "platform": "x86_64-linux",
        "builder": "/bin/sh",
        "args": ("-c", "echo hi > $out"),
        "env": {"out": A, "system": "x86_64-linux"},
    }
    fields.update(changes)
    return BasicDerivation(**fields)  # type: ignore[arg-type]


def test_basic_derivation_bytes() -> None:
    drv = basic()
    expected = (
        u64(1) + s("out") + s(A) + s("") + s("")
        + ss(B) + s("x86_64-linux") + s("/bin/sh") + ss("-c", "echo hi > $out")
        + u64(2) + s("out") + s(A) + s("system") + s("x86_64-linux")
    )  # fmt: skip
    assert encode_basic_derivation(drv) == expected
    check_incremental(partial(decode_basic_derivation, name="hello"), expected, drv)


def test_basic_derivation_is_written_in_nix_order() -> None:
    drv = basic(
        outputs={"out": DerivationOutput(path=A), "dev": DerivationOutput(path=B)},
        input_srcs=(A, B),
        env={"z": "1", "a": "2"},
    )
    data = encode_basic_derivation(drv)
    assert data.startswith(u64(2) + s("dev") + s(B) + s("") + s("") + s("out"))
    assert ss(B, A) in data
    assert data.endswith(u64(2) + s("a") + s("2") + s("z") + s("1"))


def test_basic_derivation_fixed_and_floating_outputs() -> None:
    digest = "a" * 64
    outputs = {
        "a": DerivationOutput(path=A, hash_algo="r:sha256", hash=digest),
        "b": DerivationOutput(path="", hash_algo="r:sha256"),
    }
    drv = basic(outputs=outputs)
    check_incremental(
        partial(decode_basic_derivation, name="hello"), encode_basic_derivation(drv), drv
    )


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (u64(LIMIT_COUNT + 1), WireError, "exceed the limit"),
        (u64(1) + s("out") + s("/tmp/x") + s("") + s(""), RemoteProtocolError, "store path"),
        (u64(0) + ss("/nix/store/short"), RemoteProtocolError, "store path"),
        (u64(2) + (s("out") + s("") * 3) * 2, RemoteProtocolError, "sent twice"),
        (u64(0) + ss() + s("p") + s("b") + ss() + u64(2) + (s("k") + s("v")) * 2,
         RemoteProtocolError, "sent twice"),
    ],
)  # fmt: skip
def test_basic_derivation_errors(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_basic_derivation(Reader(data), "x")


# ---------------------------------------------------------------------------------------
# BuildResult


RESULT = BuildResult(
    status=BuildStatus.BUILT,
    error_msg="",
    times_built=1,
    is_non_deterministic=False,
    start_time=1_700_000_000,
    stop_time=1_700_000_005,
    built_outputs={"sha256:" + "86" * 32 + "!out": '{"id":"x","outPath":"y"}'},
)


def test_build_result_bytes_by_version() -> None:
    head = u64(0) + s("")
    times = u64(1) + u64(0) + u64(1_700_000_000) + u64(1_700_000_005)
    outs = u64(1) + s("sha256:" + "86" * 32 + "!out") + s('{"id":"x","outPath":"y"}')
    plain = BuildResult(status=BuildStatus.BUILT)
    timed = BuildResult(
        status=BuildStatus.BUILT, times_built=1, start_time=1_700_000_000, stop_time=1_700_000_005
    )
    for version, data, value in [
        (0x202, head, plain),
        (0x205, head + times, timed),
        (0x206, head + times + outs, RESULT),
        (0x207, head + times + outs, RESULT),
    ]:
        assert encode_build_result(RESULT, version) == data
        check_incremental(partial(decode_build_result, version=version), data, value)


def test_build_result_failure() -> None:
    result = BuildResult(status=BuildStatus.TIMED_OUT, error_msg="timed out after 5 s")
    data = encode_build_result(result, 0x207)
    assert data.startswith(bytes.fromhex("08000000000000001300000000000000"))
    assert decode_build_result(Reader(data), 0x207) == result
    assert not result.is_success


def test_nix_28_server_bug_is_avoided_by_the_negotiated_version() -> None:
    """A 2.8 server sends builtOutputs to every client (nix-protocols.md §3.7, fixed in 2.12).

    A client that announced 2.5 would find the map as unexpected trailing bytes; announcing
    2.7 and decoding by the negotiated version reads it.
    """
    server_sent = encode_build_result(RESULT, 0x207)
    reader = Reader(server_sent)
    decode_build_result(reader, 0x205)
    with pytest.raises(WireError, match="trailing"):
        reader.check_end()
    version = negotiated_version(PROTOCOL_VERSION, 0x207)
    assert decode_build_result(Reader(server_sent), version) == RESULT


def test_build_result_unknown_status() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown build status 15"):
        decode_build_result(Reader(u64(15) + s("")), 0x207)


# ---------------------------------------------------------------------------------------
# Requests


def path_info(**changes: object) -> PathInfo:
    fields: dict[str, object] = {
        "path": PA,
        "deriver": PDRV,
        "nar_hash": NAR_HASH,
        "references": frozenset({PA, PB}),
        "nar_size": 1234,
        "registration_time": 0,
        "ultimate": False,
        "sigs": ("cache.example.org-1:c2ln",),
        "ca": "",
    }
    fields.update(changes)
    return PathInfo(**fields)  # type: ignore[arg-type]


INFO = path_info()

REQUESTS: list[tuple[str, ServeRequest, bytes]] = [
    (
        "1 QueryValidPaths",
        QueryValidPathsRequest(paths=frozenset({PA, PB}), lock=False, substitute=True),
        u64(1) + u64(0) + u64(1) + ss(B, A),
    ),
    ("2 QueryPathInfos", QueryPathInfosRequest(paths=frozenset({PA})), u64(2) + ss(A)),
    ("3 DumpStorePath", DumpStorePathRequest(path=PA), u64(3) + s(A)),
    ("4 ImportPaths", ImportPathsRequest(), u64(4)),
    ("5 ExportPaths", ExportPathsRequest(paths=frozenset({PB})), u64(5) + u64(0) + ss(B)),
    (
        "6 BuildPaths",
        BuildPathsRequest(targets=(DRV + "!out", A), options=BuildOptions()),
        u64(6) + ss(DRV + "!out", A) + u64(0) * 4 + u64(1) + u64(0),
    ),
    (
        "7 QueryClosure",
        QueryClosureRequest(paths=frozenset({PA}), include_outputs=True),
        u64(7) + u64(1) + ss(A),
    ),
    (
        "8 BuildDerivation",
        BuildDerivationRequest(drv_path=PDRV, drv=basic(), options=OPTIONS),
        u64(8) + s(DRV) + encode_basic_derivation(basic()) + encode_build_options(OPTIONS, 0x207),
    ),
    (
        "9 AddToStoreNar",
        AddToStoreNarRequest(info=INFO),
        u64(9) + s(A) + s(DRV) + s(NAR_HASH.digest.hex()) + ss(B, A) + u64(0) + u64(1234)
        + u64(0) + ss("cache.example.org-1:c2ln") + s(""),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "data"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_bytes(request_: ServeRequest, data: bytes) -> None:
    assert encode_request(request_, 0x207) == data
    check_incremental(partial(decode_request, version=0x207), data, request_)


def test_add_to_store_nar_header() -> None:
    data = encode_add_to_store_nar_header(INFO)
    assert data == REQUESTS[-1][2]
    check_incremental(decode_add_to_store_nar_header, data, INFO)
    no_deriver = path_info(deriver=None, references=frozenset(), ultimate=True, sigs=())
    data = encode_add_to_store_nar_header(no_deriver)
    assert data.startswith(u64(9) + s(A) + s("") + s(NAR_HASH.digest.hex()) + u64(0))
    check_incremental(decode_add_to_store_nar_header, data, no_deriver)


def test_add_to_store_nar_accepts_any_hash_form() -> None:
    """Nix's server takes base16, nix32, base64 or a prefixed hash (§3.4 cmd 9)."""
    for form in (NAR_HASH.to_nix32(), NAR_HASH.render(), NAR_HASH.to_base64()):
        data = u64(9) + s(A) + s("") + s(form) + ss() + u64(0) + u64(5) + u64(0) + ss() + s("")
        assert decode_add_to_store_nar_header(Reader(data)).nar_hash == NAR_HASH


def test_add_to_store_nar_errors() -> None:
    with pytest.raises(LocalProtocolError, match="nar_size 0"):
        encode_add_to_store_nar_header(path_info(nar_size=0))
    with pytest.raises(LocalProtocolError, match="ImportPaths"):
        encode_request(AddToStoreNarRequest(info=INFO), 0x204)
    zero = u64(9) + s(A) + s("") + s(NAR_HASH.digest.hex()) + ss() + u64(0) * 3 + ss() + s("")
    with pytest.raises(RemoteProtocolError, match="nar_size 0"):
        decode_add_to_store_nar_header(Reader(zero))
    with pytest.raises(RemoteProtocolError, match="expected command 9"):
        decode_add_to_store_nar_header(Reader(u64(8)))
    bad_hash = u64(9) + s(A) + s("") + s("xyz")
    with pytest.raises(RemoteProtocolError, match="NAR hash"):
        maybe_decode(decode_add_to_store_nar_header, bad_hash)


REQUEST_ERRORS = [
    ("unknown command", u64(10), RemoteProtocolError, "unknown serve command 10"),
    ("command 0", u64(0), RemoteProtocolError, "unknown serve command 0"),
    ("bad lock bool", u64(1) + u64(2), WireError, "neither 0 nor 1"),
    ("oversize path count", u64(2) + u64(LIMIT_COUNT + 1), WireError, "exceeds the limit"),
    ("oversize path", u64(3) + u64(1 << 20), WireError, "exceeds the limit"),
    ("not a store path", u64(3) + s("/etc/passwd"), RemoteProtocolError, "store path"),
    ("build a non-drv", u64(8) + s(A), RemoteProtocolError, "not a .drv"),
    ("timeout over 32 bits", u64(6) + ss() + u64(0) + u64(1 << 32), WireError, "larger than"),
]


@pytest.mark.parametrize(
    ("data", "error", "match"), [e[1:] for e in REQUEST_ERRORS], ids=[e[0] for e in REQUEST_ERRORS]
)
def test_request_errors(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        maybe_decode(partial(decode_request, version=0x207), data)


def test_build_derivation_of_non_drv_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError, match=r"not a \.drv"):
        encode_request(BuildDerivationRequest(drv_path=PA, drv=basic()), 0x207)


def test_requests_gate_build_options_on_the_version() -> None:
    request = BuildPathsRequest(targets=(DRV,), options=OPTIONS)
    old = encode_request(request, 0x202)
    assert old == u64(6) + ss(DRV) + u64(1) + u64(2) + u64(3)
    decoded = decode_request(Reader(old), 0x202)
    assert decoded == BuildPathsRequest(
        targets=(DRV,), options=BuildOptions(max_silent_time=1, build_timeout=2, max_log_size=3)
    )


# ---------------------------------------------------------------------------------------
# Replies


def test_valid_paths_reply() -> None:
    data = encode_query_valid_paths_reply({PA, PB})
    assert data == ss(B, A)
    check_incremental(decode_query_valid_paths_reply, data, frozenset({PA, PB}))


def test_path_infos_reply_as_nix_28_sends_it() -> None:
    info = path_info(registration_time=0, ultimate=False)
    data = encode_query_path_infos_reply([info], 0x207)
    assert data == (
        s(A) + s(DRV) + ss(B, A) + u64(1234) + u64(1234)
        + s("sha256:" + NAR_HASH.to_nix32()) + s("") + ss("cache.example.org-1:c2ln")
        + s("")
    )  # fmt: skip
    check_incremental(partial(decode_query_path_infos_reply, version=0x207), data, (info,))
    assert decode_query_path_infos_reply(Reader(s("")), 0x207) == ()


def test_path_infos_reply_before_2_4() -> None:
    data = encode_query_path_infos_reply([INFO], 0x203)
    assert data == s(A) + s(DRV) + ss(B, A) + u64(1234) + u64(1234) + s("")
    with pytest.raises(LocalProtocolError, match=r"2\.4"):
        decode_query_path_infos_reply(Reader(data), 0x203)


def test_path_infos_reply_bad_hash() -> None:
    data = s(A) + s("") + ss() + u64(1) + u64(1) + s("md5:zzz")
    with pytest.raises(RemoteProtocolError, match="NAR hash"):
        maybe_decode(partial(decode_query_path_infos_reply, version=0x207), data)


def test_success_reply() -> None:
    assert encode_success_reply() == u64(1)
    check_incremental(decode_success_reply, u64(1), None)
    with pytest.raises(RemoteProtocolError, match="success"):
        decode_success_reply(Reader(u64(0)))


def test_build_paths_reply() -> None:
    assert encode_build_paths_reply(BuildPathsResult(status=0)) == u64(0)
    check_incremental(decode_build_paths_reply, u64(0), BuildPathsResult(status=0))
    failed = BuildPathsResult(
        status=100, error_msg="\x1b[31;1merror:\x1b[0m build of '/nix/store/x.drv' failed"
    )
    data = encode_build_paths_reply(failed)
    assert data == u64(100) + s(failed.error_msg)
    check_incremental(decode_build_paths_reply, data, failed)
    assert not failed.is_success


REPLIES: list[tuple[ServeRequest, object]] = [
    (REQUESTS[0][1], frozenset({PA})),
    (REQUESTS[1][1], (INFO,)),
    (REQUESTS[3][1], None),
    (REQUESTS[5][1], BuildPathsResult(status=1, error_msg="x")),
    (REQUESTS[6][1], frozenset()),
    (REQUESTS[7][1], RESULT),
    (REQUESTS[8][1], None),
]


@pytest.mark.parametrize(("request_", "reply"), REPLIES)
def test_serve_reply_dispatch(request_: ServeRequest, reply: object) -> None:
    data = encode_serve_reply(request_, reply, 0x207)  # type: ignore[arg-type]
    check_incremental(partial(decode_serve_reply, request=request_, version=0x207), data, reply)


@pytest.mark.parametrize("request_", [REQUESTS[2][1], REQUESTS[4][1]])
def test_raw_replies_are_not_decoded_here(request_: ServeRequest) -> None:
    with pytest.raises(LocalProtocolError, match="raw stream"):
        decode_serve_reply(Reader(b""), request_, 0x207)
    with pytest.raises(LocalProtocolError, match="no structured reply"):
        encode_serve_reply(request_, None, 0x207)


# ---------------------------------------------------------------------------------------
# A whole session, both directions, decoded from byte streams


def test_replay_session() -> None:
    nar = b"N" * INFO.nar_size  # the payload of command 9, opaque here
    requests: list[ServeRequest] = [
        QueryValidPathsRequest(paths=frozenset({PA, PB})),
        AddToStoreNarRequest(info=INFO),
        BuildDerivationRequest(drv_path=PDRV, drv=basic()),
        QueryPathInfosRequest(paths=frozenset({PA})),
    ]
    replies: list[object] = [frozenset({PB}), None, RESULT, (INFO,)]
    client = encode_client_hello() + b"".join(
        encode_request(r, 0x207) + (nar if isinstance(r, AddToStoreNarRequest) else b"")
        for r in requests
    )
    server = encode_server_hello(0x207) + b"".join(
        encode_serve_reply(q, a, 0x207)  # type: ignore[arg-type]
        for q, a in zip(requests, replies, strict=True)
    )

    to_server, to_client = Reader(client), Reader(server)
    version = negotiated_version(decode_client_hello(to_server), decode_server_hello(to_client))
    seen = []
    while to_server.remaining:
        request = decode_request(to_server, version)
        if isinstance(request, AddToStoreNarRequest):
            assert to_server.read_raw(request.info.nar_size) == nar
        seen.append((request, decode_serve_reply(to_client, request, version)))
    to_client.check_end()
    assert seen == list(zip(requests, replies, strict=True))


# ---------------------------------------------------------------------------------------
# Property tests


name_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?="
store_paths = st.builds(
    lambda h, n: StorePath.parse(f"/nix/store/{h}-{n}"),
    st.text(ALPHABET, min_size=32, max_size=32),
    st.text(name_chars, min_size=1, max_size=20),
)
drv_paths = store_paths.map(lambda p: StorePath.parse(f"{p}.drv"))
path_sets = st.frozensets(store_paths, max_size=4)
texts = st.text(max_size=20)
uints = st.integers(min_value=0, max_value=2**64 - 1)
u32s = st.integers(min_value=0, max_value=2**32 - 1)
versions = st.sampled_from([0x205, 0x206, 0x207])
options = st.builds(
    BuildOptions,
    max_silent_time=u32s,
    build_timeout=u32s,
    max_log_size=uints,
    nr_repeats=u32s,
    enforce_determinism=st.booleans(),
    keep_failed=st.booleans(),
)
outputs = st.builds(
    DerivationOutput,
    path=st.just("") | store_paths.map(str),
    hash_algo=st.sampled_from(["", "r:sha256", "sha256"]),
    hash=st.sampled_from(["", "a" * 64]),
)


V = TypeVar("V")


def sorted_dict(d: dict[str, V]) -> dict[str, V]:
    return dict(sorted(d.items()))


basic_drvs = st.builds(
    BasicDerivation,
    name=st.just("x"),
    outputs=st.dictionaries(texts, outputs, max_size=3).map(sorted_dict),
    input_srcs=st.lists(store_paths, max_size=3, unique=True).map(
        lambda ps: tuple(str(p) for p in sorted(ps))
    ),
    platform=texts,
    builder=texts,
    args=st.lists(texts, max_size=3).map(tuple),
    env=st.dictionaries(texts, texts, max_size=4).map(sorted_dict),
)
infos = st.builds(
    PathInfo,
    path=store_paths,
    deriver=st.none() | drv_paths,
    nar_hash=st.binary(min_size=32, max_size=32).map(
        lambda d: Hash(algo=HashAlgo.SHA256, digest=d)
    ),
    references=path_sets,
    nar_size=st.integers(min_value=1, max_value=2**64 - 1),
    registration_time=uints,
    ultimate=st.booleans(),
    sigs=st.lists(texts, max_size=2).map(tuple),
    ca=texts,
)
requests = st.one_of(
    st.builds(QueryValidPathsRequest, paths=path_sets, lock=st.booleans(),
              substitute=st.booleans()),
    st.builds(QueryPathInfosRequest, paths=path_sets),
    st.builds(DumpStorePathRequest, path=store_paths),
    st.just(ImportPathsRequest()),
    st.builds(ExportPathsRequest, paths=path_sets),
    st.builds(BuildPathsRequest, targets=st.lists(texts, max_size=3).map(tuple), options=options),
    st.builds(QueryClosureRequest, paths=path_sets, include_outputs=st.booleans()),
    st.builds(
        BuildDerivationRequest,
        drv_path=store_paths.map(lambda p: StorePath.parse(f"/nix/store/{p.hash_part}-x.drv")),
        drv=basic_drvs,
        options=options,
    ),
    st.builds(AddToStoreNarRequest, info=infos),
)  # fmt: skip


def gated(request: ServeRequest, version: int) -> ServeRequest:
    """What the peer sees: options fields newer than `version` fall back to defaults."""
    if isinstance(request, BuildPathsRequest | BuildDerivationRequest):
        data = encode_build_options(request.options, version)
        seen = decode_build_options(Reader(data), version)
        return dataclasses.replace(request, options=seen)
    return request


@settings(max_examples=200, deadline=None)
@given(requests, versions)
def test_request_round_trip(request: ServeRequest, version: int) -> None:
    check_incremental(
        partial(decode_request, version=version),
        encode_request(request, version),
        gated(request, version),
    )


@settings(deadline=None)  # no wall-clock limits in tests
@given(
    st.builds(
        BuildResult,
        status=st.sampled_from(BuildStatus),
        error_msg=texts,
        times_built=u32s,
        is_non_deterministic=st.booleans(),
        start_time=uints,
        stop_time=uints,
        built_outputs=st.dictionaries(texts, texts, max_size=3).map(sorted_dict),
    )
)
def test_build_result_round_trip(result: BuildResult) -> None:
    check_incremental(
        partial(decode_build_result, version=0x207), encode_build_result(result, 0x207), result
    )


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.lists(infos, max_size=3).map(tuple))
def test_path_infos_reply_round_trip(values: tuple[PathInfo, ...]) -> None:
    expected = tuple(
        PathInfo(
            path=i.path,
            deriver=i.deriver,
            nar_hash=i.nar_hash,
            references=i.references,
            nar_size=i.nar_size,
            sigs=i.sigs,
            ca=i.ca,
        )
        for i in values
    )  # registration time and ultimate are not sent
    check_incremental(
        partial(decode_query_path_infos_reply, version=0x207),
        encode_query_path_infos_reply(values, 0x207),
        expected,
    )  # fmt: skip


def test_path_infos_reply_count_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_messages, "LIMIT_COUNT", 1)
    record = encode_query_path_infos_reply([INFO], 0x207)[: -len(s(""))]
    with pytest.raises(WireError, match="more than 1 path infos"):
        decode_query_path_infos_reply(Reader(record * 2 + s("")), 0x207)
