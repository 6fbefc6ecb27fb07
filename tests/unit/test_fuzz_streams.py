"""Fuzzing the decoders of everything nixdist reads from a peer.

Ten thousand seeded cases per family (serve, hook, NAR/export): random bytes, and recorded
real sessions (tests/vectors) truncated, cut into random chunks, or with bytes flipped.
Whatever arrives, a decoder may only return a value, ask for more bytes, or raise one of our
own errors (`NixdistError`) — never another exception — and it must not allocate memory in
proportion to what a length prefix claims (peak traced allocation stays under
`MEMORY_LIMIT`). Every decoder gets a finite buffer, so a hang would be a loop of ours.
Seeded cases run in well under a second per family; hypothesis, with its shrinking, covers
the serve decoders with fewer examples.
"""

from __future__ import annotations

import contextlib
import random
import tracemalloc
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import NixdistError
from nixdist.protocol import serve
from nixdist.protocol import serve_messages as msg
from nixdist.protocol.hook import decode_accepted_work, decode_hook_command, decode_settings
from nixdist.wire.export import ExportReader
from nixdist.wire.nar_reader import NarReader
from nixdist.wire.primitives import maybe_decode

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.wire.primitives import Reader

VECTORS: Final = Path(__file__).resolve().parents[1] / "vectors"
EXAMPLES: Final = 10_000
MEMORY_LIMIT: Final = 4 * 1024 * 1024
V = serve.PROTOCOL_VERSION

SERVE_DECODERS: Final[dict[str, Callable[[Reader], Any]]] = {
    "server hello": serve.decode_server_hello,
    "client hello": serve.decode_client_hello,
    "request": partial(msg.decode_request, version=V),
    "valid paths": msg.decode_query_valid_paths_reply,
    "path infos": partial(msg.decode_query_path_infos_reply, version=V),
    "build result": partial(serve.decode_build_result, version=V),
    "build paths": msg.decode_build_paths_reply,
    "success": msg.decode_success_reply,
    "nar header": msg.decode_add_to_store_nar_header,
}
HOOK_DECODERS: Final[dict[str, Callable[[Reader], Any]]] = {
    "settings": decode_settings,
    "command": decode_hook_command,
    "accepted work": decode_accepted_work,
}


def _recorded(pattern: str) -> list[bytes]:
    found = [path.read_bytes() for path in sorted(VECTORS.glob(pattern))]
    assert found, pattern
    return found


SERVE_STREAMS: Final = _recorded("serve/*.bin")
HOOK_STREAMS: Final = _recorded("hook/*.stdin.bin")
NAR_STREAMS: Final = _recorded("nar/*.bin") + _recorded("export/*.bin")


def damaged(rng: random.Random, recorded: list[bytes]) -> bytes:
    """Random bytes, or a recorded stream from a random offset, truncated, with flips."""
    if rng.randrange(4) == 0:
        return rng.randbytes(rng.randrange(4096))
    data = bytearray(rng.choice(recorded))
    start = rng.randrange(len(data) + 1)
    if rng.randrange(2):  # decoders are fed from message boundaries: often 8-byte aligned
        start -= start % 8
    data = data[start : rng.randint(start, min(len(data), start + 8192))]
    for _ in range(rng.randrange(5)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _bounded(action: Callable[[], object], *, traced: bool) -> None:
    """Run `action`: only NixdistError may escape; `traced`: and it allocates little."""
    if traced:
        tracemalloc.start()
    try:
        with contextlib.suppress(NixdistError):
            action()
        if traced:
            _, peak = tracemalloc.get_traced_memory()
            assert peak < MEMORY_LIMIT
    finally:
        if traced:
            tracemalloc.stop()


def _fuzz(family: str, one: Callable[[random.Random], Callable[[], object]]) -> None:
    """`EXAMPLES` seeded cases; a failure names the case, which replays alone."""
    for case in range(EXAMPLES):
        rng = random.Random(f"{family}-{case}")
        action = one(rng)
        try:
            _bounded(action, traced=case % 16 == 0)  # tracing every allocation is slow
        except BaseException as err:
            err.add_note(f"fuzz case {family}-{case}")
            raise


@pytest.mark.parametrize("family", ["serve", "hook"])
def test_protocol_streams(family: str) -> None:
    decoders, streams = {
        "serve": (SERVE_DECODERS, SERVE_STREAMS),
        "hook": (HOOK_DECODERS, HOOK_STREAMS),
    }[family]
    names = sorted(decoders)

    def one(rng: random.Random) -> Callable[[], object]:
        decode = decoders[rng.choice(names)]
        data = damaged(rng, streams)
        return lambda: maybe_decode(decode, data)

    _fuzz(family, one)


def test_nar_and_export_streams_in_chunks() -> None:
    def one(rng: random.Random) -> Callable[[], object]:
        export = rng.randrange(2) == 0
        data = damaged(rng, NAR_STREAMS)
        cuts = [rng.randint(1, 4096) for _ in range(rng.randrange(8))]

        def feed() -> None:
            reader: NarReader | ExportReader = ExportReader() if export else NarReader()
            rest = data
            for cut in cuts:
                reader.feed(rest[:cut])
                rest = rest[cut:]
            reader.feed(rest)

        return feed

    _fuzz("nar", one)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SERVE_DECODERS)), st.binary(max_size=512))
def test_serve_decoders_shrink_to_a_minimal_failing_input(decoder: str, data: bytes) -> None:
    """The same property under hypothesis, which shrinks any failure to a minimal input."""
    _bounded(lambda: maybe_decode(SERVE_DECODERS[decoder], data), traced=False)
