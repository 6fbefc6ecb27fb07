"""`DaemonStore`: a Nix store reached over the worker protocol (``ssh-ng://``).

The session is a ``nix-daemon --stdio`` on the builder (`nixdist.protocol.worker`). It offers
what the hook asks of a remote store — the same methods as `nixdist.store.serve.ServeStore` —
so a copy or a build does not know which protocol carries it:

    query_valid_paths    QueryValidPaths (with ``builders-use-substitutes``' substitute flag)
    query_path_infos     QueryPathInfo per path, sent in batches ahead of the replies
    query_closure        QueryPathInfo, breadth first (the protocol has no closure request)
    dump                 NarFromPath
    add_nar              AddToStoreNar, the NAR as a framed stream (one path per request, not
                         AddMultipleToStore: hooks sharing a builder claim uploads path by path,
                         and a path counts as there once its own request is answered)
    build_derivation     BuildDerivation (the BasicDerivation, as over ``ssh://``)
    build_paths          BuildPathsWithResults (``drv!*``): what an untrusted user may run

Every reply comes after a log stream. Its activities, results and messages go to `on_log`
(the hook forwards them to Nix: a build's log lines are results of type 101); an error in it
(``STDERR_ERROR``: a path refused for its signatures, a build the user may not run) becomes a
`StoreRefusedError`, after which the session is still usable.

Build options: the worker protocol carries none with a build (``SetOptions`` would change
the whole session's settings on the builder, max-jobs and cores included), so the builder's
own ``max-silent-time``, ``timeout`` and ``keep-failed`` apply — as with Nix's own hook over
``ssh-ng://``, which never sends its settings either.
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
from nixdist.protocol import worker
from nixdist.store.session import WireSession, blamed, blames_peer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from nixdist.model.derivation import BasicDerivation
    from nixdist.model.path_info import PathInfo
    from nixdist.protocol.logjson import LogMessage
    from nixdist.protocol.serve import BuildOptions, BuildResult
    from nixdist.transport.child import ByteChannel
    from nixdist.wire.primitives import Reader

_T = TypeVar("_T")

#: QueryPathInfo requests written ahead of their replies (a pipe holds 64 KiB both ways).
PIPELINE: Final = 128


class DaemonStore:
    """A ``nix-daemon --stdio`` session on a `Channel`."""

    def __init__(
        self,
        channel: ByteChannel,
        *,
        name: str,
        store_dir: str = STORE_DIR,
        greeting_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """Shake hands (within `greeting_timeout` seconds, if given) and read the daemon's
        startup log stream."""
        self.channel = channel
        self.name = name
        self.store_dir = store_dir
        #: Where the log streams' messages go (None: dropped).
        self.on_log: Callable[[LogMessage], None] | None = None
        self._session = WireSession(channel, name=name, idle_timeout=idle_timeout)
        self._session.send(worker.encode_client_hello())
        try:
            server = self._session.recv(worker.decode_server_hello, timeout=greeting_timeout)
        except TransportTimeoutError:
            raise
        except RemoteProtocolError as err:
            raise RemoteProtocolError(f"'{name}': {err}") from None
        except TransportError as err:
            if self._session.buffer:
                raise
            said = channel.stderr_tail().strip()
            raise TransportError(
                f"'{name}' closed the connection before the Nix daemon greeted us"
                + (f": {said}" if said else " (is nix-daemon on the PATH of its ssh user?)")
            ) from err
        self.version = worker.negotiated_version(worker.PROTOCOL_VERSION, server)
        self._session.send(worker.encode_client_options(self.version))
        self.info = self._session.recv(
            partial(worker.decode_daemon_info, version=self.version), timeout=greeting_timeout
        )
        self._await_last()

    @property
    def trusted(self) -> bool:
        """Whether the daemon lets us add unsigned paths and build any derivation (a daemon
        too old to say, before Nix 2.15, is taken as trusting, as Nix does)."""
        return self.info.trust is not worker.Trust.NOT_TRUSTED

    # -- plumbing -----------------------------------------------------------------------------

    def _await_last(self) -> None:
        """Read a log stream to its end, passing its messages on."""
        while True:
            message = self._session.recv(worker.decode_stderr)
            match message:
                case worker.Last():
                    return
                case worker.DaemonFailure():
                    raise StoreRefusedError(message.render())
                case _:
                    if self.on_log is not None:
                        self.on_log(message)

    def _call(self, request: bytes, decode: Callable[[Reader], _T]) -> _T:
        """Send `request`, read its log stream, then its result."""
        self._session.send(request)
        self._await_last()
        return self._session.recv(decode)

    # -- operations ---------------------------------------------------------------------------

    @blames_peer
    def query_valid_paths(
        self,
        paths: Iterable[StorePath],
        *,
        lock: bool = False,  # noqa: ARG002 - the daemon protocol has no locks to take
        substitute: bool = False,
    ) -> frozenset[StorePath]:
        paths = frozenset(paths)
        if not paths:
            return frozenset()
        return self._call(
            worker.encode_query_valid_paths(paths, substitute=substitute),
            partial(worker.decode_valid_paths, store_dir=self.store_dir),
        )

    @blames_peer
    def query_path_infos(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """The infos of those of `paths` that are valid there."""
        ordered = sorted(frozenset(paths))
        infos: dict[StorePath, PathInfo] = {}
        for start in range(0, len(ordered), PIPELINE):
            batch = ordered[start : start + PIPELINE]
            self._session.send(b"".join(map(worker.encode_query_path_info, batch)))
            for path in batch:
                self._await_last()
                info = self._session.recv(
                    partial(worker.decode_path_info, path=path, store_dir=self.store_dir)
                )
                if info is not None:
                    infos[path] = info
        return infos

    @blames_peer
    def query_closure(
        self,
        paths: Iterable[StorePath],
        *,
        include_outputs: bool = False,
    ) -> frozenset[StorePath]:
        """`paths` and everything they refer to, as far as it is valid there."""
        if include_outputs:
            raise NotImplementedError("a daemon store's closure with outputs is not needed here")
        seen: set[StorePath] = set()
        frontier = frozenset(paths)
        while frontier:
            seen |= frontier
            infos = self.query_path_infos(frontier)
            frontier = frozenset(ref for info in infos.values() for ref in info.references) - seen
        return frozenset(seen)

    def dump(self, path: StorePath) -> Iterator[bytes]:
        """The NAR of `path`, streamed as it arrives (consume it before the next call)."""
        return blamed(self.name, self._dump(path))

    def _dump(self, path: StorePath) -> Iterator[bytes]:
        self._session.send(worker.encode_nar_from_path(path))
        self._await_last()
        yield from self._session.stream_nar(path)

    @blames_peer
    def add_nar(self, info: PathInfo, nar: Iterable[bytes]) -> None:
        """Add a path with its metadata; `nar` must total exactly ``info.nar_size`` bytes.

        Unsigned paths are accepted only by a daemon that trusts us (Nix's hook copies with
        ``NoCheckSigs`` too); an untrusting one refuses them with `StoreRefusedError`.
        """
        self._session.send(worker.encode_add_to_store_nar(info, check_sigs=False))
        self._session.send_nar(info, nar, frame=worker.encode_frames)
        self._session.send(worker.END_OF_FRAMES)
        self._await_last()

    @blames_peer
    def build_derivation(
        self,
        drv_path: StorePath,
        drv: BasicDerivation,
        options: BuildOptions,  # noqa: ARG002 - see the module docstring
    ) -> BuildResult:
        return self._call(
            worker.encode_build_derivation(drv_path, drv),
            partial(worker.decode_build_result, version=self.version),
        )

    @blames_peer
    def build_paths(self, drv_paths: Iterable[StorePath]) -> dict[StorePath, BuildResult]:
        """Build every output of each derivation (their ``.drv`` closures must be there)."""
        decode = partial(
            worker.decode_build_paths_results, version=self.version, store_dir=self.store_dir
        )
        return self._call(worker.encode_build_paths_with_results(drv_paths), decode)

    def forward_log(self, fd: int, on_message: Callable[[LogMessage], None] | None = None) -> None:
        """From now on ssh's stderr goes to `fd` and the log streams' messages to
        `on_message`."""
        self.channel.forward_stderr_to(fd)
        self.on_log = on_message

    def abort(self) -> None:
        self._session.abort()

    def close(self) -> None:
        self._session.close()
