"""The store on a builder: `ServeStore` over ``ssh://``, `DaemonStore` over ``ssh-ng://``.

Both offer the same operations to a copy or a build (`RemoteStore`); `open_remote` starts the
session the machine's URI asks for (``nix-store --serve --write`` or ``nix-daemon --stdio``)
over the builder's shared ssh control master, or here without ssh for ``localhost`` and local
stores, as Nix does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.store.daemon import DaemonStore
from nixdist.store.serve import ServeStore
from nixdist.transport.child import Channel
from nixdist.transport.openssh import ssh_environment

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget

RemoteStore = ServeStore | DaemonStore


def open_remote(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str]
) -> RemoteStore:
    """A session with the store of `target`; raises `TransportError` or `ProtocolError` when
    the builder cannot be reached or does not speak the protocol (its greeting must come within
    the connect timeout)."""
    use_master = masters.ensure_master(target, environ)
    channel = Channel(
        masters.serve_argv(target, use_master=use_master),
        description=f"ssh {target.host}",
        env=ssh_environment(environ),
    )
    kind = DaemonStore if target.speaks_daemon else ServeStore
    try:
        return kind(channel, name=target.host, greeting_timeout=masters.connect_timeout_s)
    except BaseException:
        channel.kill()
        raise
