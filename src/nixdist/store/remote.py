"""The store on a builder: `ServeStore` over ``ssh://``, `DaemonStore` over ``ssh-ng://``.

Both offer the same operations to a copy or a build (`RemoteStore`); `open_remote` starts the
session the machine's URI asks for, over the builder's shared ssh control master.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.store.daemon import DaemonStore
from nixdist.store.serve import ServeStore

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget

RemoteStore = ServeStore | DaemonStore


def open_remote(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str]
) -> RemoteStore:
    """A session with the store of `target` (raises `TransportError` or `ProtocolError` when
    the builder cannot be reached or does not speak the protocol)."""
    if target.speaks_daemon:
        return DaemonStore.open_ssh(target, masters, environ)
    return ServeStore.open_ssh(target, masters, environ)
