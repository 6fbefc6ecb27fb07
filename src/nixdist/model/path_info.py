"""What a store knows about a valid path (``ValidPathInfo`` in Nix).

Fields as they travel in serve cmd 2 (QueryPathInfos) and cmd 9 (AddToStoreNar),
nix-protocols.md §3.4:

* `nar_hash`: SHA-256 of the path's NAR serialisation (cmd 2 sends ``sha256:<nix32>``,
  cmd 9 from Nix clients sends bare base16; `Hash.parse` takes both);
* `nar_size`: length of that NAR in bytes (never 0 for a real path);
* `references`: the store paths this path refers to, possibly including itself. A
  ``frozenset``: Nix sends it as a set sorted by basename, which is ``sorted(references)``
  since `StorePath` orders by basename;
* `deriver`: the ``.drv`` that produced it, or ``None`` (sent as ``""``);
* `registration_time`: Unix seconds, 0 when unknown (the receiving store then uses now);
* `ultimate`: whether the store built it itself (trusted without signatures);
* `sigs`: signatures ``keyname:base64`` in the order received;
* `ca`: content address, e.g. ``fixed:r:sha256:<nix32>`` or ``text:sha256:<nix32>``, or
  ``""``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixdist.model.hashes import Hash
    from nixdist.model.store_path import StorePath


@dataclass(frozen=True, slots=True, kw_only=True)
class PathInfo:
    path: StorePath
    deriver: StorePath | None
    nar_hash: Hash
    references: frozenset[StorePath]
    nar_size: int
    registration_time: int = 0
    ultimate: bool = False
    sigs: tuple[str, ...] = ()
    ca: str = ""

    def sorted_references(self) -> list[StorePath]:
        """References in the order Nix sends them (by basename)."""
        return sorted(self.references)
