"""The worker protocol against sessions recorded between real Nix hooks and real daemons.

tests/vectors/worker/ holds ``nix-daemon --stdio`` sessions of Nix 2.8 and 2.34, each opened
by that version's own ``build-remote`` (``tests/record_worker_vectors.py``; the meaning of the
bytes comes from Nix, see there). Each session is replayed: the daemon's bytes decoded with
our codecs, operation by operation, and compared with what Nix reported (its version, the
outputs' path info, the build's log lines and errors); the requests nixdist sends the same way
as Nix must be found byte for byte in what Nix sent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nixdist.model.derivation import parse_derivation, to_basic
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.store_path import StorePath
from nixdist.protocol import worker
from nixdist.protocol.logjson import LOG_FILE_TYPE, Msg, Result
from nixdist.wire.nar_reader import NarReader
from nixdist.wire.primitives import Reader

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "worker"
NAMES = sorted(p.name.removesuffix(".json") for p in VECTORS.glob("*.json"))


def test_both_daemon_versions_and_every_case_are_recorded() -> None:
    assert {"2.8-leaf", "2.8-top", "2.8-fail", "2.34-leaf", "2.34-top", "2.34-fail"} <= set(NAMES)
    assert "2.34-refused" in NAMES


class _Replay:
    """The daemon's side of one session, read in order."""

    def __init__(self, name: str) -> None:
        self.facts: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
        self.c2s = (VECTORS / f"{name}.c2s.bin").read_bytes()
        self.s2c = (VECTORS / f"{name}.s2c.bin").read_bytes()
        self.reader = Reader(self.s2c)
        self.log_lines: list[str] = []

    def log_stream(self) -> worker.DaemonFailure | None:
        """Messages up to the end of a log stream; each re-encodes to the bytes it came from."""
        while True:
            start = self.reader.pos
            message = worker.decode_stderr(self.reader)
            if not isinstance(message, Msg):
                assert worker.encode_stderr(message) == self.s2c[start : self.reader.pos]
            match message:
                case worker.Last():
                    return None
                case worker.DaemonFailure():
                    return message
                case Result(type=kind, fields=fields) if kind == LOG_FILE_TYPE:
                    self.log_lines.append(str(fields[0]))
                case _:
                    pass

    def nar(self) -> bytes:
        reader = NarReader(contents=False)
        reader.feed(self.s2c[self.reader.pos :])
        assert reader.done
        end = len(self.s2c) - len(reader.unused_data)
        nar = self.s2c[self.reader.pos : end]
        self.reader.pos = end
        return nar


def _handshake(replay: _Replay, *, refused: bool) -> int:
    """What Nix's client sent is what we send for its version; the daemon's part decodes."""
    facts = replay.facts
    client_version = facts["client_version"]
    hello = worker.encode_client_hello(client_version)
    assert replay.c2s.startswith(hello)
    server_version = worker.decode_server_hello(replay.reader)
    version = worker.negotiated_version(client_version, server_version)
    options = worker.encode_client_options(version)
    assert replay.c2s[len(hello) : len(hello) + len(options)] == options
    info = worker.decode_daemon_info(replay.reader, version)
    assert info.nix_version == facts["daemon_nix"]
    if version < worker.SINCE_TRUST:
        assert info.trust is worker.Trust.UNKNOWN
    else:
        assert info.trust is (worker.Trust.NOT_TRUSTED if refused else worker.Trust.TRUSTED)
    assert replay.log_stream() is None
    return version


def _replay_op(replay: _Replay, op: dict[str, Any], version: int) -> None:
    """One operation's result, compared with what Nix reported."""
    facts = replay.facts
    match op["op"]:
        case worker.Op.QUERY_VALID_PATHS:
            paths = frozenset(map(StorePath.parse, op["paths"]))
            request = worker.encode_query_valid_paths(paths, substitute=bool(op["substitute"]))
            assert request in replay.c2s
            assert worker.decode_valid_paths(replay.reader) <= paths
        case 44:  # AddMultipleToStore: Nix's way of sending; nothing follows the log stream
            pass
        case worker.Op.BUILD_DERIVATION:
            drv = parse_derivation(facts["drv_text"])
            basic = to_basic(drv, op["drv"], facts.get("inputs"))
            request = worker.encode_build_derivation(StorePath.parse(op["drv"]), basic)
            assert request in replay.c2s
            result = worker.decode_build_result(replay.reader, version)
            assert result.is_success == facts["succeeded"]
            if not result.is_success:
                assert "failed with exit code 3" in result.error_msg
                assert "failed with exit code 3" in facts["stderr"]
        case worker.Op.QUERY_PATH_INFO:
            path = StorePath.parse(op["path"])
            assert worker.encode_query_path_info(path) in replay.c2s
            start = replay.reader.pos
            got = worker.decode_path_info(replay.reader, path)
            assert got is not None
            assert worker.encode_path_info(got) == replay.s2c[start : replay.reader.pos]
            want = facts["outputs"][op["path"]]
            assert got.nar_hash == Hash.parse(want["narHash"], HashAlgo.SHA256)
            assert got.nar_size == want["narSize"]
            assert sorted(map(str, got.references)) == want["references"]
            assert str(got.deriver) == want["deriver"]
        case worker.Op.NAR_FROM_PATH:
            assert worker.encode_nar_from_path(StorePath.parse(op["path"])) in replay.c2s
            nar = replay.nar()
            want = facts["outputs"][op["path"]]
            assert len(nar) == want["narSize"]
            digest = Hash.parse(want["narHash"], HashAlgo.SHA256)
            assert hashlib.sha256(nar).digest() == digest.digest
        case other:
            pytest.fail(f"no replay for operation {other}")


@pytest.mark.parametrize("name", NAMES)
def test_session_replays(name: str) -> None:
    replay = _Replay(name)
    refused = name.endswith("-refused")
    version = _handshake(replay, refused=refused)
    ops = replay.facts["ops"]
    failure = None
    for op in ops:
        failure = replay.log_stream()
        if failure is not None:
            assert op is ops[-1]
            break
        _replay_op(replay, op, version)
    replay.reader.check_end()
    if refused:
        assert failure is not None
        assert "lacks a signature by a trusted key" in failure.message
        # The daemon marks up the path (ANSI colours); Nix prints it plain when not on a terminal.
        assert "\x1b[" in failure.message
        assert failure.render() in replay.facts["stderr"]
    else:
        assert failure is None
    for line in replay.facts["log"]:
        assert line in replay.log_lines
