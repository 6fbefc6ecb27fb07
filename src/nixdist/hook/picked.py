"""What a ``try`` that is accepted hands to the build: kept apart from `nixdist.hook.build` so
that the hook replies ``# accept`` before loading the build's modules (Nix waits meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixdist.model.machines import Machine
    from nixdist.state.slots import SlotLease
    from nixdist.store.remote import RemoteStore


@dataclass(frozen=True, slots=True, kw_only=True)
class Picked:
    """An accepted machine: the slot we hold on it and the open session."""

    machine: Machine
    lease: SlotLease
    remote: RemoteStore
