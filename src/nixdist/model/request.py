"""`BuildRequest`: one derivation Nix asks about (the hook's ``try``, nix-protocols.md §1.4).

The one request type from the wire to the decision: `nixdist.protocol.hook` decodes a ``try``
into it, `nixdist.scheduler` decides on it, the hook records and builds it; ``nixdist
explain`` makes one from a ``.drv`` or from ``--system``/``--features``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRequest:
    """May a builder take `drv_path`?

    `am_willing` is true when Nix has a free local build slot. `required_features` holds the
    derivation's ``requiredSystemFeatures`` (plus ``ca-derivations`` for floating CA).
    """

    drv_path: str
    system: str
    required_features: frozenset[str] = frozenset()
    am_willing: bool
