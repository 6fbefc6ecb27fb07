"""`ServeStore`: a Nix store reached over the ``nix-store --serve --write`` protocol.

This is the one place where the serve protocol (`nixdist.protocol.serve`) meets a transport
(`nixdist.transport.child.Channel`, through `nixdist.store.session.WireSession`): requests are
encoded and written, replies decoded as they arrive. The same class talks to a builder over
ssh and to the local store through a local ``nix-store --serve --write`` child (which reads
and uploads the inputs; the outputs come back through `nixdist.store.outputs`).

Calls are synchronous and one at a time, as the protocol is. A server that dies mid-reply
(the protocol has no in-band errors: it prints ``error: …`` and exits) becomes a
`TransportError` carrying what it printed — or a `StoreRefusedError` when what it printed is
a refusal to trust us (an unsigned path, an input-addressed build for a user not in
``trusted-users``), which is no reason to give the builder up.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Final, TypeVar

from nixdist.errors import (
    RemoteProtocolError,
    StoreRefusedError,
    TransportError,
    TransportTimeoutError,
)
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.protocol import serve
from nixdist.protocol import serve_messages as msg
from nixdist.store.session import WireSession, blamed, blames_peer
from nixdist.transport.child import ByteChannel, Channel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from nixdist.model.derivation import BasicDerivation
    from nixdist.model.local_store import LocalStore
    from nixdist.model.path_info import PathInfo
    from nixdist.protocol.logjson import LogMessage
    from nixdist.wire.primitives import Reader

_T = TypeVar("_T")
NIX_STORE: Final = "nix-store"
#: How long the local store may go without answering (a local read never takes this long;
#: a store stuck on a lock does, and must end in an error, not a hang).
LOCAL_IDLE_TIMEOUT_S: Final = 300.0


#: What a store says when it refuses a client it does not trust (Nix 2.8 and 2.34 wordings).
_TRUST_REFUSALS: Final = (
    "not privileged to build",
    "lacks a signature by a trusted key",
    "lacks a valid signature",
)


def trust_refusal(said: str) -> str | None:
    """The ``error: …`` line of a server that ended because it does not trust us (the ssh
    user is not in the builder's ``trusted-users``), if that is why it ended: the store was
    reached and answered, so the builder is not lost."""
    for line in reversed(said.splitlines()):
        if line.startswith("error:") and any(words in line for words in _TRUST_REFUSALS):
            return line.removeprefix("error:").strip()
    return None


class ServeStore:
    """A ``nix-store --serve --write`` session on a `Channel`."""

    def __init__(
        self,
        channel: ByteChannel,
        *,
        name: str,
        store_dir: str = STORE_DIR,
        greeting_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """Start the session: send our greeting and read the server's (within
        `greeting_timeout` seconds, if given). With `idle_timeout`, every later read must
        bring something within that many seconds or fails with `TransportTimeoutError`."""
        self.channel = channel
        self.name = name
        self.store_dir = store_dir
        self._session = WireSession(channel, name=name, idle_timeout=idle_timeout)
        self.channel.write(serve.encode_client_hello())
        try:
            server_version = self._recv(serve.decode_server_hello, timeout=greeting_timeout)
        except serve.ServeGreetingError as err:
            raise serve.ServeGreetingError(err.received, host=name, eof=err.eof) from None
        except TransportTimeoutError:
            raise
        except TransportError as err:
            if self._session.buffer:
                raise
            # Closed before saying anything: ssh refused, or nix-store is missing remotely.
            raise serve.ServeGreetingError(
                b"", host=name, eof=True, said=channel.stderr_tail()
            ) from err
        self.version = serve.negotiated_version(serve.PROTOCOL_VERSION, server_version)
        if self.version < serve.SINCE_ADD_TO_STORE_NAR:
            raise RemoteProtocolError(
                f"'{name}' speaks serve protocol {serve.format_version(server_version)}; "
                "nixdist needs 2.5 or newer (Nix 2.1+)"
            )

    @classmethod
    def open_local(cls, store: LocalStore, environ: Mapping[str, str]) -> ServeStore:
        """A local ``nix-store --serve --write`` on `store`, the store Nix builds in (never
        through the daemon: ``NIX_REMOTE`` is dropped)."""
        env = dict(environ)
        env.pop("NIX_REMOTE", None)
        argv = [NIX_STORE, "--store", store.uri, "--serve", "--write"]
        channel = Channel(argv, description="local nix-store --serve", env=env)
        return cls(channel, name="local", idle_timeout=LOCAL_IDLE_TIMEOUT_S)

    # -- plumbing -----------------------------------------------------------------------------

    def _recv(self, decode: Callable[[Reader], _T], *, timeout: float | None = None) -> _T:
        try:
            return self._session.recv(decode, timeout=timeout)
        except TransportError as err:
            refusal = trust_refusal(self.channel.stderr_tail())
            if refusal is None:
                raise
            raise StoreRefusedError(refusal) from err

    def _request(self, request: msg.ServeRequest) -> None:
        self.channel.write(msg.encode_request(request, self.version))

    # -- commands -------------------------------------------------------------------------------

    @blames_peer
    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> frozenset[StorePath]:
        paths = frozenset(paths)
        if not paths:
            return frozenset()
        self._request(msg.QueryValidPathsRequest(paths=paths, lock=lock, substitute=substitute))
        return self._recv(partial(msg.decode_query_valid_paths_reply, store_dir=self.store_dir))

    @blames_peer
    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        paths = frozenset(paths)
        if not paths:
            return {}
        self._request(msg.QueryPathInfosRequest(paths=paths))
        infos = self._recv(
            partial(
                msg.decode_query_path_infos_reply, version=self.version, store_dir=self.store_dir
            )
        )
        return {info.path: info for info in infos}

    @blames_peer
    def query_closure(
        self, paths: Iterable[StorePath], *, include_outputs: bool = False
    ) -> frozenset[StorePath]:
        paths = frozenset(paths)
        if not paths:
            return frozenset()
        self._request(msg.QueryClosureRequest(paths=paths, include_outputs=include_outputs))
        return self._recv(partial(msg.decode_query_closure_reply, store_dir=self.store_dir))

    def dump(self, path: StorePath) -> Iterator[bytes]:
        """The NAR of `path`, streamed as it arrives; checked for well-formedness on the way.

        The generator must be consumed to the end before the next command.
        """
        return blamed(self.name, self._dump(path))

    def _dump(self, path: StorePath) -> Iterator[bytes]:
        self._request(msg.DumpStorePathRequest(path=path))
        yield from self._session.stream_nar(path)

    @blames_peer
    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        """Add a path with its metadata; `nar` must total exactly ``info.nar_size`` bytes."""
        self._session.send(msg.encode_add_to_store_nar_header(info, self.version))
        self._session.send_nar(info, nar)
        self._recv(msg.decode_success_reply)

    @blames_peer
    def build_derivation(
        self, drv_path: StorePath, drv: BasicDerivation, options: serve.BuildOptions
    ) -> serve.BuildResult:
        self._request(msg.BuildDerivationRequest(drv_path=drv_path, drv=drv, options=options))
        return self._recv(partial(serve.decode_build_result, version=self.version))

    def forward_log(self, fd: int, on_message: Callable[[LogMessage], None] | None = None) -> None:
        """From now on the server's stderr (a build's log) goes to `fd`. The serve protocol has
        no log messages in band, so `on_message` is never called."""
        del on_message
        self.channel.forward_stderr_to(fd)

    def abort(self) -> None:
        self._session.abort()

    def close(self) -> None:
        self._session.close()
