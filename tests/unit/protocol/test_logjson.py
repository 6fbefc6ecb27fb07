"""``@nix {json}`` log lines: Nix's byte format, round trips, and never raising on bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.protocol.logjson import (
    ActivityType,
    Msg,
    Passthrough,
    Result,
    ResultType,
    SetPhase,
    Start,
    Stop,
    TraceFrame,
    Verbosity,
    encode_log_line,
    error_line,
    msg_line,
    parse_log_line,
    render_error,
)

U64_MAX = 2**64 - 1

# Lines in the exact form Nix 2.8's JSONLogger writes them (nlohmann::json: compact, keys
# sorted, raw UTF-8), with the value each must parse to.
NIX_LINES = [
    (
        b'@nix {"action":"msg","level":0,"msg":"error: build of \'/nix/store/x.drv\' failed"}',
        Msg(level=0, msg="error: build of '/nix/store/x.drv' failed"),
    ),
    (
        (
            b'@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,'
            b'"msg":"\\u001b[31;1merror:\\u001b[0m boom","raw_msg":"boom"}'
        ),
        Msg(level=0, msg="\x1b[31;1merror:\x1b[0m boom", raw_msg="boom"),
    ),
    (
        (
            b'@nix {"action":"msg","column":7,"file":"/a.nix","level":0,"line":3,"msg":"e",'
            b'"raw_msg":"r","trace":[{"raw_msg":"while x"},'
            b'{"column":1,"file":"/b.nix","line":2,"raw_msg":"while y"}]}'
        ),
        Msg(
            level=0,
            msg="e",
            raw_msg="r",
            file="/a.nix",
            line=3,
            column=7,
            trace=(
                TraceFrame(raw_msg="while x"),
                TraceFrame(raw_msg="while y", file="/b.nix", line=2, column=1),
            ),
        ),
    ),
    (
        (
            b'@nix {"action":"start","fields":["/nix/store/x.drv","ssh://b",1,1],"id":123,'
            b'"level":3,"text":"building \'/nix/store/x.drv\' on \'ssh://b\'","type":105}'
        ),
        Start(
            id=123,
            level=3,
            type=ActivityType.BUILD,
            text="building '/nix/store/x.drv' on 'ssh://b'",
            fields=("/nix/store/x.drv", "ssh://b", 1, 1),
        ),
    ),
    (
        b'@nix {"action":"start","id":5,"level":4,"parent":2,"text":"","type":0}',
        Start(id=5, level=4, type=0, text="", parent=2),
    ),
    (b'@nix {"action":"stop","id":18446744073709551615}', Stop(id=U64_MAX)),
    (
        b'@nix {"action":"result","fields":["hello w\xc3\xb6rld"],"id":9,"type":101}',
        Result(id=9, type=ResultType.BUILD_LOG_LINE, fields=("hello wörld",)),
    ),
    (b'@nix {"action":"result","id":9,"type":105}', Result(id=9, type=ResultType.PROGRESS)),
    (b'@nix {"action":"setPhase","phase":"buildPhase"}', SetPhase(phase="buildPhase")),
]


@pytest.mark.parametrize(("line", "event"), NIX_LINES)
def test_nix_lines_parse_and_reencode_byte_for_byte(line: bytes, event: object) -> None:
    assert parse_log_line(line) == event
    assert parse_log_line(line + b"\n") == event
    assert parse_log_line(line.decode()) == event
    assert encode_log_line(parse_log_line(line)) == line + b"\n"


def test_helpers() -> None:
    assert msg_line(Verbosity.WARN, "careful") == (
        b'@nix {"action":"msg","level":1,"msg":"careful"}\n'
    )
    assert error_line("cannot build on 'ssh://b'") == (
        b'@nix {"action":"msg","level":0,"msg":"error: cannot build on \'ssh://b\'"}\n'
    )


def test_enum_values() -> None:
    assert int(Verbosity.VOMIT) == 7
    assert int(ActivityType.BUILD_WAITING) == 111
    assert int(ResultType.POST_BUILD_LOG_LINE) == 107


def test_encoding_escapes_newlines_and_replaces_lone_surrogates() -> None:
    line = encode_log_line(Msg(level=0, msg="a\nb\udcff"))
    assert line == b'@nix {"action":"msg","level":0,"msg":"a\\nb\xef\xbf\xbd"}\n'


def test_encoding_rejects_signed_fields() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        encode_log_line(Result(id=1, type=101, fields=(-1,)))


BAD_LINES = [
    b"",
    b"plain build output",
    b"@nix",
    b"@nix ",
    b"@nixx {}",
    b"@nix {",
    b"@nix []",
    b"@nix 42",
    b"@nix {}",
    b'@nix {"action":"fly"}',
    b'@nix {"action":"msg","msg":"no level"}',
    b'@nix {"action":"msg","level":-1,"msg":"x"}',
    b'@nix {"action":"msg","level":1.5,"msg":"x"}',
    b'@nix {"action":"msg","level":true,"msg":"x"}',
    b'@nix {"action":"msg","level":0,"msg":3}',
    b'@nix {"action":"msg","level":0,"msg":"x","line":"3","raw_msg":"x"}',
    b'@nix {"action":"msg","level":0,"msg":"x","trace":{}}',
    b'@nix {"action":"msg","level":0,"msg":"x","trace":[1]}',
    b'@nix {"action":"msg","level":0,"msg":"x","trace":[{"file":"f"}]}',
    b'@nix {"action":"stop","id":18446744073709551616}',
    b'@nix {"action":"stop","id":NaN}',
    b'@nix {"action":"result","id":1,"type":101,"fields":[1.0]}',
    b'@nix {"action":"result","id":1,"type":101,"fields":[null]}',
    b'@nix {"action":"result","id":1,"type":101,"fields":[false]}',
    b'@nix {"action":"result","id":1,"type":101,"fields":"x"}',
    b'@nix {"action":"start","id":1,"level":0,"type":0}',
    b'@nix {"action":"setPhase"}',
    b"@nix \xff\xfe",
    b"@nix " + b"[" * 100_000,
    b"# accept",
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_lines_pass_through(line: bytes) -> None:
    assert parse_log_line(line) == Passthrough(line=line)
    assert encode_log_line(Passthrough(line=line)) == line + b"\n"


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.binary().filter(lambda b: b"\n" not in b))
def test_parse_never_raises(line: bytes) -> None:
    event = parse_log_line(line)
    if isinstance(event, Passthrough):
        assert event.line == line
    else:
        assert line.startswith(b"@nix ")


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.text().filter(lambda t: "\n" not in t))
def test_parse_never_raises_after_prefix(text: str) -> None:
    parse_log_line("@nix " + text)


uints = st.integers(min_value=0, max_value=U64_MAX)
small = st.integers(min_value=0, max_value=1000)
fields = st.lists(uints | st.text(), max_size=5).map(tuple)
opt_text = st.none() | st.text()
frames = st.builds(
    TraceFrame,
    raw_msg=st.text(),
    file=st.just(None),
    line=st.just(None),
    column=st.just(None),
) | st.builds(TraceFrame, raw_msg=st.text(), file=opt_text, line=st.none() | small, column=uints)
plain_msgs = st.builds(
    Msg,
    level=uints,
    msg=st.text(),
    trace=st.none() | st.lists(frames, max_size=3).map(tuple),
)
error_msgs = st.builds(
    Msg,
    level=small,
    msg=st.text(),
    raw_msg=st.text(),
    file=opt_text,
    line=st.none() | small,
    column=st.none() | uints,
)
events = st.one_of(
    plain_msgs,
    error_msgs,
    st.builds(
        Start,
        id=uints,
        level=uints,
        type=uints,
        text=st.text(),
        fields=fields,
        parent=st.none() | uints,
    ),
    st.builds(Stop, id=uints),
    st.builds(Result, id=uints, type=uints, fields=fields),
    st.builds(SetPhase, phase=st.text()),
)


@settings(deadline=None)  # no wall-clock limits in tests
@given(events)
def test_round_trip(event: object) -> None:
    line = encode_log_line(event)  # type: ignore[arg-type]
    assert line.startswith(b"@nix {")
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert parse_log_line(line) == event


def test_multi_line_errors_are_indented_as_nix_indents_its_own() -> None:
    # As Nix 2.34's own hook printed a failed build on a 2.34 builder (error.cc's indent()).
    remote = (
        "Cannot build '/nix/store/mlx-fail.drv'.\n"
        "Reason: builder failed with exit code 3.\n"
        "Output paths:\n"
        "  /nix/store/3p5-fail\n"
    )
    assert render_error("error: ", f"build of 'x' on 'ssh://b2' failed: {remote}") == (
        "error: build of 'x' on 'ssh://b2' failed: Cannot build '/nix/store/mlx-fail.drv'.\n"
        "       Reason: builder failed with exit code 3.\n"
        "       Output paths:\n"
        "         /nix/store/3p5-fail"
    )
    assert render_error("warning: ", "a\n\nb  \n") == "warning: a\n\n         b"


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"])))
def test_rendered_errors_keep_every_line(text: str) -> None:
    rendered = render_error("error: ", text).split("\n")
    kept = text.rstrip(" \n\r\t").split("\n")
    assert len(rendered) == len(kept)
    assert rendered[0].startswith("error:")
    for line, original in zip(rendered[1:], kept[1:], strict=True):
        assert line == ("       " + original).rstrip(" \n\r\t")
