"""Replay the golden vectors recorded from real Nix 2.8 (tests/vectors, see its README.md).

For every vector: decode the recorded bytes with our codecs, compare with the meaning recorded
next to them (which came from Nix itself, never from these codecs), re-encode, and compare the
bytes. Serve and hook sessions are decoded message by message and must consume every byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nixdist.model.derivation import (
    BasicDerivation,
    parse_derivation,
    render_derivation,
    render_show_json,
    required_system_features,
    to_basic,
)
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.store_path import StorePath
from nixdist.protocol.hook import (
    AcceptedWork,
    HookOutputLine,
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
)
from nixdist.protocol.logjson import PREFIX, encode_log_line
from nixdist.protocol.serve import (
    BuildOptions,
    BuildResult,
    decode_client_hello,
    decode_server_hello,
    encode_basic_derivation,
    encode_client_hello,
    encode_server_hello,
    negotiated_version,
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
    ServeReply,
    ServeRequest,
    decode_request,
    decode_serve_reply,
    encode_request,
    encode_serve_reply,
)
from nixdist.wire.export import (
    ExportedPath,
    ExportEnd,
    ExportNar,
    ExportReader,
    ExportRecord,
    decode_export,
    encode_export,
)
from nixdist.wire.nar import (
    Contents,
    Directory,
    DirectoryEnd,
    NarEvent,
    Regular,
    Symlink,
    encode_nar,
)
from nixdist.wire.nar_reader import NarReader, decode_nar, nar_size_and_hash
from nixdist.wire.primitives import Reader

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nixdist.model.request import BuildRequest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
INLINE_LIMIT = 4096  # the recorder inlines regular files up to this size (README.md)

Json = dict[str, Any]


def _names(kind: str) -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in (VECTORS / kind).glob("*.json"))


@cache
def _json(kind: str, name: str) -> Json:
    meaning: Json = json.loads((VECTORS / kind / f"{name}.json").read_text(encoding="utf-8"))
    return meaning


def _bin(kind: str, name: str, suffix: str = "bin") -> bytes:
    return (VECTORS / kind / f"{name}.{suffix}").read_bytes()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_every_kind_has_vectors() -> None:
    """A missing directory would silently parametrize to nothing."""
    for kind in ("nar", "drv", "export", "serve", "hook"):
        assert _names(kind), f"no vectors in tests/vectors/{kind}"


# ---------------------------------------------------------------------------------------------
# nar/


def _tree_from_events(events: list[NarEvent]) -> Json:
    """The README's json description of the tree the events describe."""
    rest = iter(_merge_contents(events))
    tree = _node_json(next(rest), rest)
    assert next(rest, None) is None
    return tree


def _node_json(event: NarEvent, rest: Iterator[NarEvent]) -> Json:
    match event:
        case Regular(executable=executable, size=size):
            data = b""
            if size:
                contents = next(rest)
                assert isinstance(contents, Contents)
                data = contents.data
            assert len(data) == size
            node: Json = {"type": "regular", "executable": executable, "size": size}
            if size <= INLINE_LIMIT:
                node["contents_base64"] = base64.b64encode(data).decode()
            else:
                node["sha256"] = hashlib.sha256(data).hexdigest()
            return node
        case Symlink(target=target):
            return {"type": "symlink", "target": target.decode()}
        case Directory():
            entries = []
            while not isinstance(child := next(rest), DirectoryEnd):
                assert not isinstance(child, Contents)
                entries.append({"name": child.path[-1].decode(), "node": _node_json(child, rest)})
            return {"type": "directory", "entries": entries}
    raise AssertionError(event)  # pragma: no cover


def _events_from_tree(node: Json, path: tuple[bytes, ...] = ()) -> list[NarEvent]:
    """NAR events from the recorder's description alone (inline contents only)."""
    match node["type"]:
        case "regular":
            data = base64.b64decode(node["contents_base64"])
            events: list[NarEvent] = [
                Regular(path=path, executable=node["executable"], size=len(data))
            ]
            return [*events, Contents(data=data)] if data else events
        case "symlink":
            return [Symlink(path=path, target=node["target"].encode())]
        case _:
            out: list[NarEvent] = [Directory(path=path)]
            for entry in node["entries"]:
                out += _events_from_tree(entry["node"], (*path, entry["name"].encode()))
            return [*out, DirectoryEnd(path=path)]


def _merge_contents(events: list[NarEvent]) -> list[NarEvent]:
    """Join consecutive Contents chunks, so differently split streams compare equal."""
    out: list[NarEvent] = []
    for event in events:
        if isinstance(event, Contents) and out and isinstance(out[-1], Contents):
            out[-1] = Contents(data=out[-1].data + event.data)
        else:
            out.append(event)
    return out


@pytest.mark.parametrize("name", _names("nar"))
def test_nar(name: str) -> None:
    data, meaning = _bin("nar", name), _json("nar", name)
    events = decode_nar(data)
    assert _tree_from_events(events) == meaning["tree"]

    size, digest = nar_size_and_hash([data])
    assert size == len(data) == meaning["narSize"]
    assert Hash(algo=HashAlgo.SHA256, digest=digest).render() == meaning["narHash"]

    assert b"".join(encode_nar(events)) == data


@pytest.mark.parametrize("name", _names("nar"))
def test_nar_push_reader_any_split(name: str) -> None:
    """Fed in odd-sized pieces, the reader yields the same tree and stops at the NAR's end."""
    data = _bin("nar", name)
    reader = NarReader()
    events: list[NarEvent] = []
    for piece in _chunks(data + b"TRAILER!", 13):
        events += reader.feed(piece)
    reader.finish()
    assert reader.done
    assert reader.offset == len(data)
    assert reader.unused_data == b"TRAILER!"
    assert _merge_contents(events) == _merge_contents(decode_nar(data))


@pytest.mark.parametrize(
    "name", [n for n in _names("nar") if "sha256" not in json.dumps(_json("nar", n)["tree"])]
)
def test_nar_written_from_description(name: str) -> None:
    """Our writer, fed only the recorder's description of the tree, writes Nix's bytes."""
    events = _events_from_tree(_json("nar", name)["tree"])
    assert b"".join(encode_nar(events)) == _bin("nar", name)


# ---------------------------------------------------------------------------------------------
# drv/


@pytest.mark.parametrize("name", _names("drv"))
def test_drv(name: str) -> None:
    data, meaning = _bin("drv", name), _json("drv", name)
    text = data.decode("utf-8", "surrogateescape")
    drv = parse_derivation(text)
    assert render_show_json(meaning["drvPath"], drv) == meaning["show-derivation"]
    assert render_derivation(drv).encode("utf-8", "surrogateescape") == data


# ---------------------------------------------------------------------------------------------
# export/


def _export_json(record: ExportRecord) -> Json:
    return {
        "path": record.info.path,
        "references": sorted(record.info.references),
        "deriver": record.info.deriver or "",
        "narHash_base16": hashlib.sha256(record.nar).hexdigest(),
        "narSize": len(record.nar),
    }


def _expected_export(paths: list[Json]) -> list[Json]:
    keys = ("path", "references", "deriver", "narHash_base16", "narSize")
    return [{key: p[key] for key in keys} for p in paths]


@pytest.mark.parametrize("name", _names("export"))
def test_export(name: str) -> None:
    data, meaning = _bin("export", name), _json("export", name)
    records = decode_export(data)
    assert [_export_json(r) for r in records] == _expected_export(meaning["paths"])
    for record, facts in zip(records, meaning["paths"], strict=True):
        assert Hash.of(HashAlgo.SHA256, record.nar).render() == facts["narHash"]
        decode_nar(record.nar)  # each record holds exactly one well-formed NAR
    assert b"".join(encode_export((r.info, [r.nar]) for r in records)) == data


@pytest.mark.parametrize("name", _names("export"))
def test_export_push_reader_any_split(name: str) -> None:
    data, meaning = _bin("export", name), _json("export", name)
    reader = ExportReader()
    events = []
    for piece in _chunks(data + b"after", 11):
        events += reader.feed(piece)
    reader.finish()
    assert reader.unused_data == b"after"
    assert isinstance(events[-1], ExportEnd)
    done = [e for e in events if isinstance(e, ExportedPath)]
    assert [(e.info.path, e.nar_size, e.nar_hash.hex()) for e in done] == [
        (p["path"], p["narSize"], p["narHash_base16"]) for p in meaning["paths"]
    ]
    nar = b"".join(e.data for e in events if isinstance(e, ExportNar))
    assert len(nar) == sum(p["narSize"] for p in meaning["paths"])


# ---------------------------------------------------------------------------------------------
# serve/: both directions, message by message


def _paths(paths: frozenset[StorePath]) -> list[str]:
    return [str(p) for p in sorted(paths)]


def _options_json(options: BuildOptions) -> Json:
    return {
        "max_silent_time": options.max_silent_time,
        "build_timeout": options.build_timeout,
        "max_log_size": options.max_log_size,
        "nr_repeats": options.nr_repeats,
        "enforce_determinism": int(options.enforce_determinism),
        "keep_failed": int(options.keep_failed),
    }


def _derivation_json(drv: BasicDerivation) -> Json:
    return {
        "outputs": {
            name: {"path": o.path, "hash_algo": o.hash_algo, "hash": o.hash}
            for name, o in drv.outputs.items()
        },
        "input_srcs": list(drv.input_srcs),
        "platform": drv.platform,
        "builder": drv.builder,
        "args": list(drv.args),
        "env": dict(drv.env),
    }


def _export_records_json(records: list[ExportRecord]) -> list[Json]:
    return [
        {
            "nar_size": len(r.nar),
            "nar_sha256": hashlib.sha256(r.nar).hexdigest(),
            "path": r.info.path,
            "references": list(r.info.references),
            "deriver": r.info.deriver or "",
        }
        for r in records
    ]


def _nar_json(nar: bytes) -> Json:
    return {"nar_size": len(nar), "nar_sha256": hashlib.sha256(nar).hexdigest()}


def _request_json(request: ServeRequest, payload: Json | list[Json] | None) -> Json:  # noqa: PLR0911 - one case per command
    """The recorder's json form of a decoded request (`payload`: its NAR or export stream)."""
    match request:
        case QueryValidPathsRequest():
            return {
                "lock": int(request.lock),
                "substitute": int(request.substitute),
                "paths": _paths(request.paths),
            }
        case QueryPathInfosRequest():
            return {"paths": _paths(request.paths)}
        case DumpStorePathRequest():
            return {"path": str(request.path)}
        case ImportPathsRequest():
            return {"paths": payload}
        case ExportPathsRequest():
            return {"unused": 0, "paths": _paths(request.paths)}
        case BuildPathsRequest():
            return {"targets": list(request.targets), "options": _options_json(request.options)}
        case QueryClosureRequest():
            return {"include_outputs": int(request.include_outputs), "paths": _paths(request.paths)}
        case BuildDerivationRequest():
            return {
                "drv_path": str(request.drv_path),
                "derivation": _derivation_json(request.drv),
                "options": _options_json(request.options),
            }
        case AddToStoreNarRequest(info=info):
            assert isinstance(payload, dict)
            return {
                "path": str(info.path),
                "deriver": str(info.deriver) if info.deriver else "",
                "nar_hash": info.nar_hash.to_base16(),
                "references": _paths(info.references),
                "registration_time": info.registration_time,
                "nar_size": info.nar_size,
                "ultimate": int(info.ultimate),
                "sigs": list(info.sigs),
                "ca": info.ca,
                "nar_sha256": payload["nar_sha256"],
            }
    raise AssertionError(request)  # pragma: no cover


def _reply_json(request: ServeRequest, reply: ServeReply) -> Json:
    match request, reply:
        case QueryValidPathsRequest(), frozenset():
            return {"valid": _paths(reply)}
        case QueryClosureRequest(), frozenset():
            return {"closure": _paths(reply)}
        case QueryPathInfosRequest(), tuple():
            return {
                "infos": [
                    {
                        "path": str(info.path),
                        "deriver": str(info.deriver) if info.deriver else "",
                        "references": _paths(info.references),
                        "download_size": info.nar_size,  # Nix sends the NAR size twice
                        "nar_size": info.nar_size,
                        "nar_hash": info.nar_hash.render(),
                        "ca": info.ca,
                        "sigs": list(info.sigs),
                    }
                    for info in reply
                ]
            }
        case ((ImportPathsRequest() | AddToStoreNarRequest()), None):
            return {"result": 1}
        case BuildPathsRequest(), BuildPathsResult():
            out: Json = {"status": reply.status}
            if not reply.is_success:
                out["error_msg"] = reply.error_msg
            return out
        case BuildDerivationRequest(), BuildResult():
            return {
                "status": int(reply.status),
                "error_msg": reply.error_msg,
                "times_built": reply.times_built,
                "is_non_deterministic": int(reply.is_non_deterministic),
                "start_time": reply.start_time,
                "stop_time": reply.stop_time,
                "built_outputs": dict(reply.built_outputs),
            }
    raise AssertionError((request, reply))  # pragma: no cover


def _read_nar(reader: Reader, data: bytes) -> bytes:
    """The NAR at the reader's position in `data`, found by parsing it (it self-delimits)."""
    start = reader.pos
    nar = NarReader(contents=False)
    nar.feed(data[start:])
    nar.finish()
    reader.pos = start + nar.offset
    return data[start : reader.pos]


def _read_export(reader: Reader, data: bytes) -> list[ExportRecord]:
    """The export stream at the reader's position in `data` (also self-delimiting)."""
    start = reader.pos
    stream = ExportReader()
    stream.feed(data[start:])
    stream.finish()
    reader.pos = len(data) - len(stream.unused_data)
    return decode_export(data[start : reader.pos])


@pytest.mark.parametrize("name", _names("serve"))
def test_serve_session(name: str) -> None:
    """Decode the whole session in order: requests server-side, replies client-side."""
    c2s, s2c = _bin("serve", name, "c2s.bin"), _bin("serve", name, "s2c.bin")
    session = _json("serve", name)["session"]
    requests, replies = Reader(c2s), Reader(s2c)

    client_version = decode_client_hello(requests)
    server_version = decode_server_hello(replies)
    assert (client_version, server_version) == (
        session["client_version"],
        session["server_version"],
    )
    assert encode_client_hello(client_version) == c2s[:16]
    assert encode_server_hello(server_version) == s2c[:16]
    version = negotiated_version(client_version, server_version)

    for exchange in session["exchanges"]:
        assert [requests.pos, replies.pos] == [exchange["c2s_span"][0], exchange["s2c_span"][0]]
        request = decode_request(requests, version)
        assert request.command == exchange["cmd"], exchange["name"]
        payload: Json | list[Json] | None = None
        if isinstance(request, AddToStoreNarRequest):
            nar = requests.read_raw(request.info.nar_size)
            decode_nar(nar)
            payload = _nar_json(nar)
        elif isinstance(request, ImportPathsRequest):
            payload = _export_records_json(_read_export(requests, c2s))
        assert _request_json(request, payload) == exchange["request"]
        assert requests.pos == exchange["c2s_span"][1]

        if isinstance(request, DumpStorePathRequest):
            assert _nar_json(_read_nar(replies, s2c)) == exchange["reply"]
        elif isinstance(request, ExportPathsRequest):
            assert {"export": _export_records_json(_read_export(replies, s2c))} == exchange["reply"]
        else:
            reply = decode_serve_reply(replies, request, version)
            assert _reply_json(request, reply) == exchange["reply"]
        assert replies.pos == exchange["s2c_span"][1]

    requests.check_end()
    replies.check_end()


def _span(data: bytes, span: list[int]) -> bytes:
    return data[span[0] : span[1]]


@pytest.mark.parametrize("name", _names("serve"))
def test_serve_session_reencodes(name: str) -> None:
    """Every request and reply, decoded on its own and encoded again, gives Nix's bytes."""
    c2s, s2c = _bin("serve", name, "c2s.bin"), _bin("serve", name, "s2c.bin")
    session = _json("serve", name)["session"]
    version = negotiated_version(session["client_version"], session["server_version"])
    for exchange in session["exchanges"]:
        request_bytes = _span(c2s, exchange["c2s_span"])
        reply_bytes = _span(s2c, exchange["s2c_span"])
        reader = Reader(request_bytes)
        request = decode_request(reader, version)
        head = encode_request(request, version)
        assert request_bytes[: len(head)] == head
        payload = request_bytes[len(head) :]
        match request:
            case AddToStoreNarRequest():
                assert b"".join(encode_nar(decode_nar(payload))) == payload
            case ImportPathsRequest():
                records = decode_export(payload)
                assert b"".join(encode_export((r.info, [r.nar]) for r in records)) == payload
            case _:
                assert payload == b""

        match request:
            case DumpStorePathRequest():
                assert b"".join(encode_nar(decode_nar(reply_bytes))) == reply_bytes
            case ExportPathsRequest():
                records = decode_export(reply_bytes)
                assert b"".join(encode_export((r.info, [r.nar]) for r in records)) == reply_bytes
            case _:
                reply_reader = Reader(reply_bytes)
                reply = decode_serve_reply(reply_reader, request, version)
                reply_reader.check_end()
                assert encode_serve_reply(request, reply, version) == reply_bytes


@pytest.mark.parametrize("name", [n for n in _names("serve") if n.startswith("build-remote")])
def test_serve_build_derivation_is_what_our_hook_would_send(name: str) -> None:
    """build-remote's BasicDerivation = to_basic(parsed .drv, input set from the hook)."""
    c2s, meaning = _bin("serve", name, "c2s.bin"), _json("serve", name)
    facts = meaning["facts"]
    hook = _json("hook", name)["stdin"]
    (exchange,) = (e for e in meaning["session"]["exchanges"] if e["cmd"] == 8)
    drv = parse_derivation(facts["drv_aterm"])
    basic = to_basic(drv, facts["drv_path"], hook["inputs"])
    request = BuildDerivationRequest(
        drv_path=StorePath.parse(facts["drv_path"]), drv=basic, options=BuildOptions()
    )
    assert encode_request(request, 0x207) == _span(c2s, exchange["c2s_span"])
    assert encode_basic_derivation(basic) in _span(c2s, exchange["c2s_span"])


# ---------------------------------------------------------------------------------------------
# hook/


def _try_json(request: BuildRequest) -> Json:
    return {
        "type": "try",
        "am_willing": int(request.am_willing),
        "system": request.system,
        "drv_path": request.drv_path,
        "required_features": sorted(request.required_features),
    }


def _hook_lines(data: bytes) -> list[HookOutputLine]:
    state = HookOutputState()
    lines: list[HookOutputLine] = []
    for piece in _chunks(data, 7):
        lines += state.feed(piece)
    return lines + state.close()


def _line_json(line: HookOutputLine) -> Json:
    match line:
        case ReplyLine(word=word):
            return {"kind": "reply", "word": word}
        case MachineLine(machine=machine):
            return {"kind": "machine", "text": machine}
        case LogLine(message=message):
            encoded = encode_log_line(message)
            return {"kind": "log", "json": json.loads(encoded.removeprefix(PREFIX))}
        case OtherLine(line=raw):
            return {"kind": "text", "text": raw.decode()}
    raise AssertionError(line)  # pragma: no cover


def _encode_hook_lines(lines: list[HookOutputLine]) -> bytes:
    out = bytearray()
    for i, line in enumerate(lines):
        match line:
            case ReplyLine() if line.reply is Reply.ACCEPT:
                machine = lines[i + 1]
                assert isinstance(machine, MachineLine)
                out += encode_reply(Reply.ACCEPT, machine.machine)
            case ReplyLine():
                assert line.reply is not None
                out += encode_reply(line.reply)
            case MachineLine():
                pass  # written with its accept
            case LogLine(message=message):
                out += encode_log_line(message)
            case OtherLine(line=raw):
                out += raw + b"\n"
    return bytes(out)


@pytest.mark.parametrize("name", _names("hook"))
def test_hook_stdin(name: str) -> None:
    """Settings block, try requests and (after an accept) the input and output sets."""
    data, meaning = _bin("hook", name, "stdin.bin"), _json("hook", name)
    expected = meaning["stdin"]
    words = [line["word"] for line in meaning["stderr_lines"] if line["kind"] == "reply"]
    reader = Reader(data)

    settings = decode_settings(reader)
    assert settings == expected["settings"]
    assert list(settings) == list(expected["settings"])  # wire order (sorted by Nix)
    for key, value in meaning["expected_settings"].items():
        assert settings[key] == value
    typed = HookSettings.parse(settings)
    assert typed.builders == settings["builders"]
    assert typed.max_jobs == int(settings["max-jobs"])
    encoded = encode_settings(settings)

    tries: list[BuildRequest] = []
    work: AcceptedWork | None = None
    while reader.remaining:
        command = decode_hook_command(reader)
        assert not isinstance(command, UnknownHookCommand), command
        tries.append(command)
        encoded += encode_try(command)
        if words[len(tries) - 1] == Reply.ACCEPT:
            work = decode_accepted_work(reader)
            encoded += encode_accepted_work(work)
            break
    reader.check_end()

    assert [_try_json(t) for t in tries] == expected["requests"]
    assert len(tries) == len(words)  # one reply per try
    if work is None:
        assert "inputs" not in expected
    else:
        assert sorted(work.inputs) == expected["inputs"] == meaning["facts"]["input_closure"]
        assert sorted(work.wanted_outputs) == expected["wanted_outputs"]
    assert encoded == data


@pytest.mark.parametrize("name", _names("hook"))
def test_hook_stderr(name: str) -> None:
    """What the hook wrote on fd 2, read as Nix reads it; re-encoded to the same bytes."""
    data, meaning = _bin("hook", name, "stderr.bin"), _json("hook", name)
    lines = _hook_lines(data)
    assert [_line_json(line) for line in lines] == meaning["stderr_lines"]
    assert _encode_hook_lines(lines) == data


@pytest.mark.parametrize(
    "name", [n for n in _names("hook") if "drv_aterm" in _json("hook", n)["facts"]]
)
def test_hook_try_features_come_from_the_drv(name: str) -> None:
    """The features Nix sent in `try` are the ones our derivation model computes."""
    meaning = _json("hook", name)
    drv = parse_derivation(meaning["facts"]["drv_aterm"])
    (request,) = meaning["stdin"]["requests"]
    assert sorted(required_system_features(drv)) == request["required_features"]
    assert request["system"] == drv.platform
