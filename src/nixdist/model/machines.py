"""Build machines, as listed in Nix's machines files (the `builders` setting)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """One builder line, with Nix's defaults applied.

    `uri` is normalised (a bare ``user@host`` becomes ``ssh://user@host``).
    `public_host_key` is the base64 text of field 8 as written (validated as base64).
    `source` names where the line came from (``file:line``), for error messages and `explain`.
    """

    uri: str
    systems: tuple[str, ...]
    ssh_key: str | None = None
    max_jobs: int = 1
    speed_factor: float = 1.0
    supported_features: frozenset[str] = frozenset()
    mandatory_features: frozenset[str] = frozenset()
    public_host_key: str | None = None
    source: str = ""
