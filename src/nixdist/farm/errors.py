"""The farm's error (a candidate for `nixdist.errors`; kept here until it moves there)."""

from __future__ import annotations

from nixdist.errors import NixdistError


class FarmError(NixdistError):
    """The local farm could not do what was asked (start a builder, find its processes, …)."""
