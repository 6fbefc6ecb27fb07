"""Which local store Nix builds in, from its ``store`` setting, and where its files really are.

Nix hands the hook its ``store`` setting (nix-protocols.md §1.3). A build loop only ever runs
on a local store, so the values the hook can meet are::

    auto | local | daemon | unix://…     the machine's own store, /nix/store
    local?root=/x[&…]                    a chroot store: /nix/store paths kept under /x/nix/store
    local?real=/y[&…]                    the same with the real directory named directly
    /x                                   a path: Nix reads it as local?root=/x
    local:///x[?…]                       how Nix 2.34 writes that store back (the root as the
                                         URI's path)

The hook must read the ``.drv`` and write the outputs at their *real* location, and run every
``nix-store`` it starts on that same store (``--store``): otherwise it reads another store's
``.drv`` (or none) and imports into a store Nix does not look at.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Final

from nixdist.errors import ConfigError
from nixdist.model.store_path import STORE_DIR, StorePath

#: Values meaning "the machine's own store"; a daemon's build loop runs on its local store.
_DEFAULT_STORES: Final = frozenset({"", "auto", "local", "daemon"})
_HEX_PAIR: Final = re.compile(rb"[0-9a-fA-F]{2}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalStore:
    """The store a Nix build loop runs on, as the hook must reach it."""

    #: The ``--store`` argument for a ``nix-store`` on this store (``local`` for the default).
    uri: str
    #: Where ``/nix/store/<name>`` really is on this machine's filesystem.
    real_store_dir: str

    def real_path(self, path: StorePath) -> str:
        """The file or directory behind `path`."""
        return posixpath.join(self.real_store_dir, path.basename)


DEFAULT_LOCAL_STORE: Final = LocalStore(uri="local", real_store_dir=STORE_DIR)


def parse_local_store(value: str, *, source: str = "the 'store' setting") -> LocalStore:
    """The local store named by a ``store`` setting; `ConfigError` for any other kind."""
    text = value.strip()
    if text in _DEFAULT_STORES or text.startswith("unix://"):
        return DEFAULT_LOCAL_STORE
    if text.startswith("/"):
        return _chroot(text, {"root": text}, source)
    if text.startswith("local://"):
        root, _, query = text.removeprefix("local://").partition("?")
        params = _query(query)
        if root:
            params.setdefault("root", root)
        return _chroot(text, params, source)
    if text.startswith("local?"):
        return _chroot(text, _query(text.removeprefix("local?")), source)
    raise ConfigError(
        f"{source} is '{value}': a build hook runs for a local store only "
        "(auto, local, daemon, local?root=DIR or a directory)"
    )


def _chroot(uri: str, params: dict[str, str], source: str) -> LocalStore:
    if not params.get("root") and not params.get("real"):
        return LocalStore(uri=uri, real_store_dir=STORE_DIR)
    store_dir = params.get("store", STORE_DIR)
    if store_dir != STORE_DIR:
        raise ConfigError(
            f"{source} is '{uri}': its store directory is {store_dir}; nixdist supports "
            f"{STORE_DIR} only"
        )
    real = params.get("real")
    if not real:
        root = params.get("root", "")
        if not root.startswith("/"):
            raise ConfigError(f"{source} is '{uri}': 'root' must be an absolute path")
        real = posixpath.join(root, STORE_DIR.lstrip("/"))
    if not real.startswith("/"):
        raise ConfigError(f"{source} is '{uri}': 'real' must be an absolute path")
    return LocalStore(uri=uri, real_store_dir=posixpath.normpath(real))


def _query(text: str) -> dict[str, str]:
    """``a=1&b=2`` as Nix's ``decodeQuery`` reads it (percent-decoded; later keys win)."""
    params: dict[str, str] = {}
    for item in text.split("&"):
        name, _, value = item.partition("=")
        if name:
            params[_percent_decode(name)] = _percent_decode(value)
    return params


def _percent_decode(text: str) -> str:
    out = bytearray()
    i = 0
    raw = text.encode()
    while i < len(raw):
        if raw[i] == ord("%") and _HEX_PAIR.fullmatch(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="replace")
