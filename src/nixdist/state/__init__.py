"""nixdist's state on disk: slot locks in Nix's ``current-load`` directory (`slots`)."""

from nixdist.state.slots import (
    SlotDirectory,
    SlotLease,
    SlotTry,
    default_current_load_dir,
    escape_uri,
)

__all__ = [
    "SlotDirectory",
    "SlotLease",
    "SlotTry",
    "default_current_load_dir",
    "escape_uri",
]
