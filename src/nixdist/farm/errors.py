"""The farm's error, defined with the others in `nixdist.errors`."""

from nixdist.errors import FarmError

__all__ = ["FarmError"]
