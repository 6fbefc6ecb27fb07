"""The worker protocol codec: properties and refusals (recorded sessions: test_worker_vectors)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import RemoteProtocolError, WireError
from nixdist.protocol import serve, worker
from nixdist.protocol.logjson import Msg, Result, Start, Stop, Verbosity
from nixdist.wire.primitives import Reader, encode_text, encode_texts, encode_u64, maybe_decode

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
u32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
text = st.text(st.characters(codec="utf-8"), max_size=40)
fields = st.lists(st.one_of(u64, text), max_size=4).map(tuple)

messages = st.one_of(
    st.builds(worker.Last),
    st.builds(worker.DaemonFailure, message=text, traces=st.lists(text, max_size=3).map(tuple)),
    st.builds(Msg, level=st.just(int(Verbosity.ERROR)), msg=text.map(lambda t: t.rstrip("\n"))),
    st.builds(Start, id=u64, level=u32, type=u32, text=text, fields=fields, parent=u64),
    st.builds(Stop, id=u64),
    st.builds(Result, id=u64, type=u32, fields=fields),
)


@given(messages)
def test_log_stream_messages_round_trip(message: worker.StderrMessage) -> None:
    data = worker.encode_stderr(message)
    reader = Reader(data)
    assert worker.decode_stderr(reader) == message
    reader.check_end()


@given(messages, st.data())
def test_a_message_cut_anywhere_is_waited_for(
    message: worker.StderrMessage, data: st.DataObject
) -> None:
    encoded = worker.encode_stderr(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    assert maybe_decode(worker.decode_stderr, encoded[:cut]) is None
    assert maybe_decode(worker.decode_stderr, encoded) == (message, len(encoded))


@pytest.mark.parametrize("code", [0, 0x64617461, 0x64617416, 0x12345678])
def test_unknown_or_unexpected_log_messages_are_refused(code: int) -> None:
    with pytest.raises(RemoteProtocolError):
        worker.decode_stderr(Reader(encode_u64(code) + bytes(64)))


def test_an_unknown_activity_field_type_is_refused() -> None:
    data = encode_u64(worker.Stderr.RESULT) + encode_u64(1) + encode_u64(101)
    data += encode_u64(1) + encode_u64(7) + encode_u64(0)
    with pytest.raises(RemoteProtocolError, match="field type 7"):
        worker.decode_stderr(Reader(data))


@pytest.mark.parametrize(
    ("magic", "version", "why"),
    [
        (worker.WORKER_MAGIC_1, 0x126, "greeting"),
        (0x5452EECB, 0x207, "greeting"),  # a nix-store --serve answering
        (serve.WORKER_MAGIC_2, 0x11F, "1.31"),
        (serve.WORKER_MAGIC_2, 0x226, "2.38"),
    ],
)
def test_a_daemon_we_cannot_speak_to_is_refused_in_words(
    magic: int, version: int, why: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        worker.decode_server_hello(Reader(encode_u64(magic) + encode_u64(version)))


@given(st.integers(min_value=worker.MIN_VERSION, max_value=0x1FF))
def test_every_version_we_speak_is_taken_and_negotiated_down(version: int) -> None:
    hello = encode_u64(serve.WORKER_MAGIC_2) + encode_u64(version)
    assert worker.decode_server_hello(Reader(hello)) == version
    assert worker.negotiated_version(worker.PROTOCOL_VERSION, version) == min(version, 0x126)


@pytest.mark.parametrize(
    ("version", "tail", "want"),
    [
        (0x122, encode_text("2.8.0"), worker.DaemonInfo(nix_version="2.8.0")),
        (
            0x125,
            encode_text("2.20.1") + encode_u64(2),
            worker.DaemonInfo(nix_version="2.20.1", trust=worker.Trust.NOT_TRUSTED),
        ),
        (
            0x126,
            encode_texts(["x"]) + encode_text("2.34.8") + encode_u64(1),
            worker.DaemonInfo(nix_version="2.34.8", trust=worker.Trust.TRUSTED, features=("x",)),
        ),
    ],
)
def test_what_the_daemon_says_about_itself_follows_the_version(
    version: int, tail: bytes, want: worker.DaemonInfo
) -> None:
    reader = Reader(tail)
    assert worker.decode_daemon_info(reader, version) == want
    reader.check_end()


def test_an_unknown_trust_value_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="trust"):
        worker.decode_daemon_info(Reader(encode_text("2.20") + encode_u64(3)), 0x125)


def test_the_client_sends_features_only_from_1_38() -> None:
    assert worker.encode_client_options(0x125) == encode_u64(0) * 2
    assert worker.encode_client_options(0x126) == encode_u64(0) * 3


@given(st.binary(max_size=3 * worker.FRAME_SIZE))
def test_a_framed_stream_is_length_prefixed_chunks(data: bytes) -> None:
    frames = [data[i : i + worker.FRAME_SIZE] for i in range(0, len(data), worker.FRAME_SIZE)]
    stream = b"".join(map(worker.encode_frame, frames)) + worker.END_OF_FRAMES
    reader, got = Reader(stream), b""
    while size := reader.read_u64():
        got += reader.read_raw(size)
    assert got == data
    reader.check_end()


def test_a_build_result_for_a_derivation_without_outputs_named_is_refused() -> None:
    data = encode_u64(1) + encode_text("/nix/store/" + "a" * 32 + "-x.drv")
    with pytest.raises(WireError, match="names no outputs"):
        worker.decode_build_paths_results(Reader(data), 0x126)
