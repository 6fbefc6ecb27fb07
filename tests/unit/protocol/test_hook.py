"""The build-hook protocol: hex tables, round trips, settings, replies, and replaying stderr."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import ConfigError, LocalProtocolError, ParseError, WireError
from nixdist.hook.build import exit_for_build_status
from nixdist.model.request import BuildRequest
from nixdist.protocol.hook import (
    LIMIT_SETTINGS,
    AcceptedWork,
    HookExit,
    HookOutputPhase,
    HookOutputState,
    HookSettings,
    LogLine,
    MachineLine,
    OtherLine,
    Reply,
    ReplyLine,
    UnknownHookCommand,
    decode_accepted_work,
    decode_hook_command,
    decode_settings,
    encode_accepted_work,
    encode_reply,
    encode_settings,
    encode_try,
    parse_hook_output_line,
    parse_hook_verbosity,
)
from nixdist.protocol.logjson import Msg, Passthrough, Stop, Verbosity
from nixdist.protocol.serve import BuildStatus
from nixdist.wire.primitives import LIMIT_TEXT, Reader, maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def s(text: str) -> bytes:
    data = text.encode()
    return u64(len(data)) + data + bytes(-len(data) % 8)


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def check_incremental(decode: Callable[[Reader], object], data: bytes, value: object) -> None:
    """Every proper prefix needs more data; the whole decodes to `value`; extra is left over."""
    for cut in range(len(data)):
        assert maybe_decode(decode, data[:cut]) is None, cut
    assert maybe_decode(decode, data) == (value, len(data))
    assert maybe_decode(decode, data + b"\x01more") == (value, len(data))
    reader = Reader(data)
    assert decode(reader) == value
    reader.check_end()


# ---------------------------------------------------------------------------------------
# Hex tables, computed by hand from nix-protocols.md §1.3-1.6


def test_settings_hex() -> None:
    settings = {"builders": "", "system": "x86_64-linux"}
    data = encode_settings(settings)
    expected = u64(1) + s("builders") + s("") + u64(1) + s("system") + s("x86_64-linux") + u64(0)
    assert data == expected
    assert data.hex() == (
        "0100000000000000"  # one more setting
        "0800000000000000"  # "builders": 8 bytes, no padding
        "6275696c64657273"
        "0000000000000000"  # "" (empty value)
        "0100000000000000"  # one more setting
        "0600000000000000"  # "system" + 2 bytes of padding
        "73797374656d0000"
        "0c00000000000000"
        "7838365f36342d6c696e757800000000"
        "0000000000000000"  # end of the block
    )
    check_incremental(decode_settings, data, settings)
    assert list(decode_settings(Reader(data))) == ["builders", "system"]
    unsorted = encode_settings([("b", "1"), ("a", "2")])  # written in the order given
    assert unsorted == u64(1) + s("b") + s("1") + u64(1) + s("a") + s("2") + u64(0)


def test_try_hex() -> None:
    request = BuildRequest(
        am_willing=True,
        system="x86_64-linux",
        drv_path="/d.drv",
        required_features=frozenset({"kvm", "big-parallel"}),
    )
    data = encode_try(request)
    assert data == hx(
        "0300000000000000"
        "7472790000000000"
        "0100000000000000"
        "0c00000000000000"
        "7838365f36342d6c696e757800000000"
        "0600000000000000"
        "2f642e6472760000"
        "0200000000000000"
        "0c00000000000000"
        "6269672d706172616c6c656c00000000"  # "big-parallel"
        "0300000000000000"
        "6b766d0000000000"  # "kvm"
    )
    check_incremental(decode_hook_command, data, request)


def test_try_without_features() -> None:
    request = BuildRequest(am_willing=False, system="builtin", drv_path="/nix/store/x.drv")
    data = encode_try(request)
    assert data == s("try") + u64(0) + s("builtin") + s("/nix/store/x.drv") + u64(0)
    check_incremental(decode_hook_command, data, request)


def test_unknown_first_word() -> None:
    data = s("quit")
    check_incremental(decode_hook_command, data, UnknownHookCommand(word="quit"))


def test_accepted_work_hex() -> None:
    work = AcceptedWork(inputs=frozenset({"/b", "/a"}), wanted_outputs=frozenset())
    data = encode_accepted_work(work)
    assert data == hx(
        "0200000000000000"
        "0200000000000000"
        "2f61000000000000"
        "0200000000000000"
        "2f62000000000000"
        "0000000000000000"
    )
    check_incremental(decode_accepted_work, data, work)


# ---------------------------------------------------------------------------------------
# Round trips


texts = st.text(max_size=30)
text_sets = st.frozensets(texts, max_size=5)


@settings(deadline=None)  # no wall-clock limits in tests
@given(
    st.builds(
        BuildRequest,
        am_willing=st.booleans(),
        system=texts,
        drv_path=texts,
        required_features=text_sets,
    )
)
def test_try_round_trip(request: BuildRequest) -> None:
    check_incremental(decode_hook_command, encode_try(request), request)


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.builds(AcceptedWork, inputs=text_sets, wanted_outputs=text_sets))
def test_accepted_work_round_trip(work: AcceptedWork) -> None:
    check_incremental(decode_accepted_work, encode_accepted_work(work), work)


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.dictionaries(texts, texts, max_size=6))
def test_settings_round_trip(settings: dict[str, str]) -> None:
    data = encode_settings(settings)
    check_incremental(decode_settings, data, settings)
    assert list(decode_settings(Reader(data)).items()) == list(settings.items())


# ---------------------------------------------------------------------------------------
# Decode errors


DECODE_ERRORS = [
    ("settings marker 2", decode_settings, u64(2), "neither 0 nor 1"),
    (
        "settings name twice",
        decode_settings,
        u64(1) + s("a") + s("1") + u64(1) + s("a") + s("2") + u64(0),
        "sent twice",
    ),
    (
        "oversize setting value",
        decode_settings,
        u64(1) + s("a") + u64(LIMIT_TEXT + 1),
        "exceeds the limit",
    ),
    (
        "non-zero padding",
        decode_settings,
        u64(1) + u64(1) + b"a\x00\x00\x00\x00\x00\x00\x01",
        "padding",
    ),
    ("am_willing 2", decode_hook_command, s("try") + u64(2), "neither 0 nor 1"),
    (
        "oversize feature count",
        decode_hook_command,
        s("try") + u64(0) + s("x") + s("/d.drv") + u64(1 << 40),
        "exceeds the limit",
    ),
    ("oversize word", decode_hook_command, u64(1 << 20), "exceeds the limit"),
    ("oversize input count", decode_accepted_work, u64(1 << 60), "exceeds the limit"),
]


@pytest.mark.parametrize(
    ("decode", "data", "match"), [e[1:] for e in DECODE_ERRORS], ids=[e[0] for e in DECODE_ERRORS]
)
def test_decode_errors(decode: Callable[[Reader], object], data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        maybe_decode(decode, data)
    with pytest.raises(WireError, match=match):
        decode(Reader(data))


def test_too_many_settings() -> None:
    entries = (u64(1) + s(str(i)) + s("") for i in range(LIMIT_SETTINGS + 1))
    data = b"".join(entries) + u64(0)
    with pytest.raises(WireError, match="more than"):
        decode_settings(Reader(data))


def test_trailing_data_is_an_error_for_whole_buffers() -> None:
    reader = Reader(encode_try(BuildRequest(am_willing=False, system="s", drv_path="d")) + u64(0))
    decode_hook_command(reader)
    with pytest.raises(WireError, match="trailing"):
        reader.check_end()


def test_truncated_whole_buffer() -> None:
    with pytest.raises(WireError, match="truncated"):
        decode_hook_command(Reader(s("try")[:-3]))


# ---------------------------------------------------------------------------------------
# Settings view

SETTINGS_28 = {  # values as Nix 2.8 rendered them in an observed run (§1.3)
    "builders": "@/etc/nix/machines",
    "builders-use-substitutes": "false",
    "build-poll-interval": "5",
    "enforce-determinism": "true",
    "extra-platforms": "i686-linux x86_64-v1-linux",
    "keep-failed": "false",
    "max-build-log-size": "0",
    "max-free": "18446744073709551615",
    "max-jobs": "0",
    "max-silent-time": "0",
    "repeat": "0",
    "store": "auto",
    "system": "x86_64-linux",
    "system-features": "benchmark big-parallel kvm nixos-test",
    "timeout": "0",
}


def test_hook_settings_from_nix() -> None:
    hs = HookSettings.parse(SETTINGS_28)
    assert hs.builders == "@/etc/nix/machines"
    assert hs.system == "x86_64-linux"
    assert hs.system_features == {"benchmark", "big-parallel", "kvm", "nixos-test"}
    assert hs.extra_platforms == {"i686-linux", "x86_64-v1-linux"}
    assert hs.local_systems == {"x86_64-linux", "i686-linux", "x86_64-v1-linux"}
    assert hs.max_jobs == 0
    assert hs.builders_use_substitutes is False
    assert hs.store == "auto"
    assert (hs.max_silent_time, hs.timeout, hs.max_build_log_size) == (0, 0, 0)
    assert hs.keep_failed is False
    assert hs.build_poll_interval == 5
    assert hs.enforce_determinism is True
    assert hs.raw["max-free"] == "18446744073709551615"


def test_hook_settings_overrides_and_defaults() -> None:
    hs = HookSettings.parse(
        {
            "builders": "ssh://a x86_64-linux; ssh://b",
            "max-jobs": "4",
            "keep-failed": "true",
            "timeout": "3600",
            "builders-use-substitutes": "yes",
        }
    )
    assert hs.builders == "ssh://a x86_64-linux; ssh://b"
    assert (hs.max_jobs, hs.keep_failed, hs.timeout, hs.builders_use_substitutes) == (
        4,
        True,
        3600,
        True,
    )
    assert hs.system == ""
    assert hs.system_features == frozenset()
    assert HookSettings.parse({}).builders == "@/etc/nix/machines"


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("max-jobs", "auto", "not a non-negative integer"),
        ("max-jobs", "-1", "not a non-negative integer"),
        ("timeout", "\uff11", "not a non-negative integer"),  # a full-width digit
        ("max-silent-time", "18446744073709551616", "not a non-negative integer"),
        ("keep-failed", "maybe", "not a boolean"),
        ("builders-use-substitutes", "", "not a boolean"),
    ],
)
def test_hook_settings_errors_name_the_setting(name: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        HookSettings.parse({name: value})
    assert info.value.field == name
    assert name in str(info.value)


# ---------------------------------------------------------------------------------------
# argv, replies, exit status


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["build-remote", "3"], Verbosity.INFO),
        (["nix", "__build-remote", "0"], Verbosity.ERROR),
        (["/usr/local/bin/nixdist-hook", "7"], Verbosity.VOMIT),
        (["hook", "12"], Verbosity.VOMIT),
    ],
)
def test_hook_verbosity(argv: list[str], verbosity: Verbosity) -> None:
    assert parse_hook_verbosity(argv) is verbosity


@pytest.mark.parametrize("argv", [[], ["hook"], ["hook", "x"], ["hook", "-1"], ["hook", "٣"]])
def test_hook_verbosity_errors(argv: list[str]) -> None:
    with pytest.raises(ParseError):
        parse_hook_verbosity(argv)


@pytest.mark.parametrize(
    ("reply", "machine", "line"),
    [
        (Reply.ACCEPT, "ssh://builder1", b"# accept\nssh://builder1\n"),
        (Reply.DECLINE, None, b"# decline\n"),
        (Reply.POSTPONE, None, b"# postpone\n"),
        (Reply.DECLINE_PERMANENTLY, None, b"# decline-permanently\n"),
    ],
)
def test_encode_reply(reply: Reply, machine: str | None, line: bytes) -> None:
    assert encode_reply(reply, machine) == line


@pytest.mark.parametrize(
    ("reply", "machine"),
    [(Reply.ACCEPT, None), (Reply.ACCEPT, "a\nb"), (Reply.ACCEPT, "a\rb"), (Reply.DECLINE, "m")],
)
def test_encode_reply_errors(reply: Reply, machine: str | None) -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(reply, machine)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (BuildStatus.BUILT, HookExit.OK),
        (BuildStatus.ALREADY_VALID, HookExit.OK),
        (BuildStatus.RESOLVES_TO_ALREADY_VALID, HookExit.OK),
        (BuildStatus.PERMANENT_FAILURE, HookExit.BUILD_FAILED),
        (BuildStatus.TRANSIENT_FAILURE, HookExit.BUILD_FAILED),
        (BuildStatus.TIMED_OUT, HookExit.TIMED_OUT),
        (BuildStatus.MISC_FAILURE, HookExit.FAILED),
        (BuildStatus.LOG_LIMIT_EXCEEDED, HookExit.FAILED),
        (BuildStatus.INPUT_REJECTED, HookExit.FAILED),
    ],
)
def test_exit_for_build_status(status: BuildStatus, code: HookExit) -> None:
    assert exit_for_build_status(status) is code


def test_exit_codes() -> None:
    assert [int(c) for c in HookExit] == [0, 1, 100, 101]


# ---------------------------------------------------------------------------------------
# What Nix reads on the hook's stderr


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (b"# accept", ReplyLine(word="accept")),
        (b"# decline-permanently\n", ReplyLine(word="decline-permanently")),
        (b"# maybe", ReplyLine(word="maybe")),
        (b"# accept\r", ReplyLine(word="accept\r")),  # Nix does not strip CR: a bad reply
        (b"#accept", OtherLine(line=b"#accept", shown=True)),
        (b"hello", OtherLine(line=b"hello", shown=True)),
        (b'@nix {"action":"stop","id":1}', LogLine(message=Stop(id=1))),
        (b"@nix {broken", OtherLine(line=b"@nix {broken", shown=True)),
    ],
)
def test_parse_hook_output_line(line: bytes, parsed: object) -> None:
    assert parse_hook_output_line(line) == parsed
    assert parse_hook_output_line(line.decode()) == parsed


def test_reply_line_reply() -> None:
    assert ReplyLine(word="postpone").reply is Reply.POSTPONE
    assert ReplyLine(word="maybe").reply is None


def test_replay_a_whole_session_split_anywhere() -> None:
    session = (
        b"plain before reply\n"
        b'@nix {"action":"msg","level":1,"msg":"warning"}\n'
        b"# postpone\n"
        b"# decline\n"
        b"# accept\n"
        b"ssh://builder1\n"
        b"plain after accept\n"
        b'@nix {"action":"msg","level":0,"msg":"error: x"}\n'
        b"@nix {broken\n"
        b"no newline at EOF"
    )
    expected = [
        OtherLine(line=b"plain before reply", shown=True),
        LogLine(message=Msg(level=1, msg="warning")),
        ReplyLine(word="postpone"),
        ReplyLine(word="decline"),
        ReplyLine(word="accept"),
        MachineLine(machine="ssh://builder1"),
        OtherLine(line=b"plain after accept", shown=False),
        LogLine(message=Msg(level=0, msg="error: x")),
        OtherLine(line=b"@nix {broken", shown=False),
        OtherLine(line=b"no newline at EOF", shown=False),
    ]
    for cut in range(len(session)):
        state = HookOutputState()
        got = state.feed(session[:cut]) + state.feed(session[cut:]) + state.close()
        assert got == expected
        assert state.phase is HookOutputPhase.BUILDING


@pytest.mark.parametrize("word", ["decline-permanently", "nonsense"])
def test_nix_stops_reading_after(word: str) -> None:
    state = HookOutputState()
    assert state.feed(f"# {word}\n".encode()) == [ReplyLine(word=word)]
    assert state.phase is HookOutputPhase.DONE
    assert state.feed(b"x\n") == [OtherLine(line=b"x", shown=False)]
    assert state.close() == []


def test_passthrough_is_not_a_log_line() -> None:
    assert not isinstance(parse_hook_output_line(b"x"), Passthrough)


def test_decode_a_whole_stdin_session() -> None:
    """What Nix writes on the hook's stdin, decoded message by message from one buffer."""
    settings = {"builders": "ssh://b", "system": "x86_64-linux"}
    first = BuildRequest(am_willing=False, system="x86_64-linux", drv_path="/nix/store/a.drv")
    second = BuildRequest(
        am_willing=True,
        system="aarch64-linux",
        drv_path="/nix/store/b.drv",
        required_features=frozenset({"big-parallel"}),
    )
    work = AcceptedWork(inputs=frozenset({"/nix/store/i-src"}), wanted_outputs=frozenset({"out"}))
    stream = (
        encode_settings(settings)
        + encode_try(first)
        + encode_try(second)
        + encode_accepted_work(work)
    )
    reader = Reader(stream)
    assert decode_settings(reader) == settings
    assert decode_hook_command(reader) == first
    assert decode_hook_command(reader) == second
    assert decode_accepted_work(reader) == work
    reader.check_end()


def test_the_report_form_follows_the_settings_nix_sent() -> None:
    # Nix 2.16+ sends max-substitution-jobs (2.34.8 and 2.26.3 do); 2.8 does not.
    assert HookSettings.parse({"max-substitution-jobs": "16"}).bracketed_reports
    assert not HookSettings.parse({"max-jobs": "1"}).bracketed_reports
