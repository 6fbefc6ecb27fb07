"""A store that stops answering ends in an error that says so, never in a hang."""

from __future__ import annotations

import sys

import pytest

from nixdist.errors import TransportTimeoutError
from nixdist.model.store_path import StorePath
from nixdist.protocol.serve import SERVE_MAGIC_2
from nixdist.store.serve import ServeStore
from nixdist.transport.child import Channel
from nixdist.wire.primitives import encode_u64

# Greets like nix-store --serve (protocol 2.6), then reads its input and never answers.
STUCK = (
    "import sys, time; "
    f"sys.stdout.buffer.write({encode_u64(SERVE_MAGIC_2) + encode_u64(0x206)!r}); "
    "sys.stdout.flush(); time.sleep(3600)"
)


def test_a_silent_store_is_given_up_after_its_idle_timeout() -> None:
    channel = Channel([sys.executable, "-c", STUCK], description="stuck nix-store --serve")
    store = ServeStore(channel, name="stuck", idle_timeout=0.2)
    path = StorePath.parse("/nix/store/" + "a" * 32 + "-x")
    try:
        with pytest.raises(TransportTimeoutError, match="stuck nix-store --serve: no answer"):
            store.query_valid_paths([path])
    finally:
        store.abort()
