"""The Nix versions a farm builder or client can run, and the Debian suite that ships each.

=======  ========  ===================================================  ==============
``nix``  suite     debootstrap script                                   Nix in it
=======  ========  ===================================================  ==============
2.8      bookworm  (bookworm's own)                                     2.8.x
2.26     trixie    (bookworm's own)                                     2.26.x
2.34     forky     ``/usr/share/debootstrap/scripts/sid`` (bookworm's   2.34.x
                   debootstrap has no ``forky`` script)
=======  ========  ===================================================  ==============

A version is named by its major.minor only: the patch level is whatever the suite has today,
and `nixdist.farm.rootfs` records the exact ``nix --version`` of each root filesystem it builds.
Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nixdist.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class NixRelease:
    """One Nix version as a Debian suite installs it."""

    version: str
    suite: str
    #: The debootstrap script to use instead of the suite's own, when it has none.
    script: str | None = None


RELEASES: Final[tuple[NixRelease, ...]] = (
    NixRelease(version="2.8", suite="bookworm"),
    NixRelease(version="2.26", suite="trixie"),
    NixRelease(version="2.34", suite="forky", script="/usr/share/debootstrap/scripts/sid"),
)
KNOWN_VERSIONS: Final = tuple(r.version for r in RELEASES)


def parse_nix_version(text: str, *, source: str, field: str = "nix") -> str:
    """Check that `text` names a known Nix version (``2.34``) and return it."""
    value = text.strip()
    for release in RELEASES:
        if release.version == value:
            return value
    raise ConfigError(
        f"{field}={text!r} is not a Nix version the farm knows; known: {', '.join(KNOWN_VERSIONS)}",
        file=source,
        field=field,
    )


def release(version: str) -> NixRelease:
    """The `NixRelease` of a known version (see `parse_nix_version`)."""
    for candidate in RELEASES:
        if candidate.version == version:
            return candidate
    raise ConfigError(
        f"{version!r} is not a Nix version the farm knows; known: {', '.join(KNOWN_VERSIONS)}",
        file="--nix",
    )
