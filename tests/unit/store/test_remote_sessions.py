"""The accept path's stores against scripted peers: greetings, refusals, blame, log routing.

Each test composes what a peer says (with the protocol codecs, whose bytes the golden vectors
pin to real Nix) and replays it through a `ScriptedChannel`; what nixdist says back is checked
where it matters. Which side an error blames (`peer`) and whether it is a refusal
(`StoreRefusedError`: never a reason to fail over) is what the hook's failover decides on.
"""

from __future__ import annotations

import dataclasses

import pytest

from nixdist.errors import RemoteProtocolError, StoreRefusedError, TransportError
from nixdist.model.derivation import BasicDerivation
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath
from nixdist.protocol import serve, worker
from nixdist.protocol.logjson import LOG_FILE_TYPE, LogMessage, Result, Start, Stop
from nixdist.protocol.serve import BuildOptions, BuildResult, BuildStatus, encode_store_paths
from nixdist.store.daemon import DaemonStore
from nixdist.store.serve import ServeStore
from nixdist.wire.primitives import encode_text, encode_texts, encode_u64
from scripted import ScriptedChannel

ANSI_REFUSAL = (
    "cannot add path '\x1b[35;1m/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x\x1b[0m' because "
    "it lacks a signature by a trusted key"
)
PATH = StorePath.parse("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x")
OTHER = StorePath.parse("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y")
DRV_PATH = StorePath.parse("/nix/store/cccccccccccccccccccccccccccccccc-x.drv")
NAR = b"not checked by the client; the daemon checks the hash"
INFO = PathInfo(
    path=PATH,
    deriver=None,
    nar_hash=Hash.of(HashAlgo.SHA256, NAR),
    references=frozenset(),
    nar_size=len(NAR),
)
DRV = BasicDerivation(
    name="x",
    outputs={},
    input_srcs=(),
    platform="x86_64-linux",
    builder="/bin/sh",
    args=(),
    env={},
)
LAST = worker.encode_stderr(worker.Last())


def hello(version: int = 0x126, trust: worker.Trust = worker.Trust.TRUSTED) -> bytes:
    out = encode_u64(serve.WORKER_MAGIC_2) + encode_u64(version)
    if version >= worker.SINCE_FEATURES:
        out += encode_texts([])
    out += encode_text("2.34.8") if version >= worker.SINCE_NIX_VERSION else b""
    if version >= worker.SINCE_TRUST:
        out += encode_u64(trust)
    return out + LAST


def daemon(script: bytes, *, stderr: str = "") -> tuple[DaemonStore, ScriptedChannel]:
    channel = ScriptedChannel(script, stderr=stderr, chunk=7)  # replies arrive in pieces
    return DaemonStore(channel, name="b1"), channel


def test_the_handshake_announces_1_38_and_reads_the_trust() -> None:
    store, channel = daemon(hello(trust=worker.Trust.NOT_TRUSTED))
    assert store.version == 0x126
    assert not store.trusted
    assert bytes(channel.sent) == worker.encode_client_hello() + worker.encode_client_options(0x126)
    old, _ = daemon(hello(0x122))  # Nix 2.8: no word on trust, taken as trusting (as Nix does)
    assert (old.version, old.trusted, old.info.nix_version) == (0x122, True, "2.34.8")


def test_a_peer_that_is_not_a_daemon_is_named() -> None:
    with pytest.raises(RemoteProtocolError, match="'b1': not a Nix daemon"):
        daemon(serve.encode_server_hello())


def test_a_daemon_that_closes_at_once_is_reported_with_its_last_words() -> None:
    with pytest.raises(TransportError, match="bash: nix-daemon: command not found"):
        daemon(b"", stderr="bash: nix-daemon: command not found")


def test_a_refusal_blames_the_builder_but_is_no_loss_and_the_session_goes_on() -> None:
    refusal = worker.encode_stderr(worker.DaemonFailure(message=ANSI_REFUSAL))
    store, _ = daemon(hello() + refusal + LAST + encode_store_paths([OTHER]))
    with pytest.raises(StoreRefusedError) as caught:
        store.add_nar(INFO, [NAR])
    assert caught.value.peer == "b1"
    assert str(caught.value) == ANSI_REFUSAL.replace("\x1b[35;1m", "").replace("\x1b[0m", "")
    assert store.query_valid_paths([PATH, OTHER]) == {OTHER}


def test_a_nar_goes_as_frames_and_a_short_one_ends_the_session() -> None:
    store, channel = daemon(hello() + LAST)
    start = len(channel.sent)
    store.add_nar(INFO, [NAR[:10], NAR[10:]])
    sent = bytes(channel.sent[start:])
    header = worker.encode_add_to_store_nar(INFO, check_sigs=False)
    assert sent == header + worker.encode_frame(NAR[:10]) + worker.encode_frame(NAR[10:]) + (
        worker.END_OF_FRAMES
    )
    short, short_channel = daemon(hello())
    with pytest.raises(RemoteProtocolError, match="its path info says"):
        short.add_nar(INFO, [NAR[:5]])
    assert short_channel.killed


def test_the_build_log_goes_where_it_is_sent_and_the_result_follows() -> None:
    result = BuildResult(status=BuildStatus.BUILT, times_built=1, start_time=5, stop_time=6)
    messages: list[worker.StderrMessage] = [
        Start(id=7, level=3, type=105, text="building x", parent=0),
        Result(id=7, type=LOG_FILE_TYPE, fields=("hello from the build",)),
        Stop(id=7),
    ]
    script = hello() + b"".join(map(worker.encode_stderr, messages)) + LAST
    store, channel = daemon(script + worker.encode_build_result(result, 0x126))
    seen: list[LogMessage] = []
    store.forward_log(4, seen.append)
    got = store.build_derivation(DRV_PATH, DRV, BuildOptions())
    assert (got.status, got.start_time, got.stop_time) == (BuildStatus.BUILT, 5, 6)
    assert seen == messages
    assert channel.stderr_fd == 4
    assert channel.unread == 0


def test_a_daemon_lost_mid_reply_blames_the_builder() -> None:
    store, _ = daemon(hello() + LAST + encode_u64(3), stderr="Connection reset by peer")
    with pytest.raises(TransportError, match="Connection reset by peer") as caught:
        store.query_valid_paths([PATH])
    assert caught.value.peer == "b1"
    assert not isinstance(caught.value, StoreRefusedError)


def test_path_infos_are_asked_ahead_and_missing_ones_left_out() -> None:
    paths = sorted(StorePath.parse(f"/nix/store/{c * 32}-p{i}") for i, c in enumerate("abcdfghijk"))
    infos = {p: dataclasses.replace(INFO, path=p) for p in paths[::2]}
    replies = b"".join(LAST + worker.encode_path_info(infos.get(p)) for p in paths)
    store, channel = daemon(hello() + replies)
    start = len(channel.sent)
    assert store.query_path_infos(paths) == infos
    assert bytes(channel.sent[start:]) == b"".join(map(worker.encode_query_path_info, paths))


def test_a_serve_peer_refusing_an_untrusted_user_is_no_loss() -> None:
    said = "error: you are not privileged to build input-addressed derivations"
    channel = ScriptedChannel(serve.encode_server_hello(), stderr=f"warning: x\n{said}")
    store = ServeStore(channel, name="b2")
    with pytest.raises(StoreRefusedError, match="not privileged") as caught:
        store.build_derivation(DRV_PATH, DRV, BuildOptions())
    assert caught.value.peer == "b2"


def test_a_serve_peer_that_dies_otherwise_is_lost() -> None:
    channel = ScriptedChannel(serve.encode_server_hello(), stderr="Killed")
    store = ServeStore(channel, name="b2")
    with pytest.raises(TransportError, match="Killed") as caught:
        store.build_derivation(DRV_PATH, DRV, BuildOptions())
    assert not isinstance(caught.value, StoreRefusedError)
    assert caught.value.peer == "b2"
