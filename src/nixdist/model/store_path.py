"""Store paths: ``<store dir>/<32 nix32 chars>-<name>``.

Rules (Nix 2.8 ``path.cc``, ``StorePath`` and ``checkName``; nix-protocols.md §4.4):

* the store dir is an absolute path without a trailing slash, normally ``/nix/store``;
* the basename is the 32-character nix32 hash part (alphabet
  ``0123456789abcdfghijklmnpqrsvwxyz``), a ``-``, and the name;
* the name is 1 to 211 characters from ``A-Z a-z 0-9 + - . _ ? =``.

(Nix 2.8 does not look at the character after the hash part; we require the dash.)

Nix orders store paths by basename, hash part first; `StorePath` compares the same way, so
``sorted(paths)`` is the order Nix sends sets in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nixdist.errors import ParseError
from nixdist.model import nixbase32

STORE_DIR: Final = "/nix/store"
HASH_LEN: Final = 32
MAX_NAME_LEN: Final = 211
DRV_EXTENSION: Final = ".drv"

_NAME_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-._?="
)
_HASH_CHARS: Final = frozenset(nixbase32.ALPHABET)


class StorePathError(ParseError):
    """Text that is not a store path; the subclass says what was wrong."""


class NotInStoreError(StorePathError):
    """The path is not directly inside the expected store dir."""


class HashPartError(StorePathError):
    """The hash part is too short or contains a character outside the nix32 alphabet."""


class MissingDashError(StorePathError):
    """No ``-`` between the hash part and the name."""


class InvalidNameError(StorePathError):
    """The name is empty, too long, or contains a forbidden character."""


def _check_basename(basename: str, *, whole: str) -> None:
    if len(basename) < HASH_LEN:
        raise HashPartError(f"store path {whole!r} is too short for a {HASH_LEN}-char hash")
    for position, char in enumerate(basename[:HASH_LEN]):
        if char not in _HASH_CHARS:
            raise HashPartError(
                f"store path {whole!r}: invalid nix32 character {char!r} "
                f"at position {position} of the hash part"
            )
    if basename[HASH_LEN : HASH_LEN + 1] != "-":
        raise MissingDashError(f"store path {whole!r}: no '-' after the hash part")
    check_name(basename[HASH_LEN + 1 :], whole=whole)


def check_name(name: str, *, whole: str | None = None) -> None:
    """Raise `InvalidNameError` unless `name` is a valid store path name."""
    what = f"store path {whole!r}" if whole is not None else f"store path name {name!r}"
    if not name:
        raise InvalidNameError(f"{what}: empty name")
    if len(name) > MAX_NAME_LEN:
        raise InvalidNameError(f"{what}: name has {len(name)} characters, more than {MAX_NAME_LEN}")
    for position, char in enumerate(name):
        if char not in _NAME_CHARS:
            raise InvalidNameError(
                f"{what}: invalid character {char!r} at position {position} of the name"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class StorePath:
    """A syntactically valid store path. Build it with `StorePath.parse` only."""

    store_dir: str = STORE_DIR
    hash_part: str
    name: str

    @classmethod
    def parse(cls, text: str, store_dir: str = STORE_DIR) -> StorePath:
        """Parse a full path ``<store_dir>/<hash>-<name>``."""
        prefix = store_dir + "/"
        if not text.startswith(prefix):
            raise NotInStoreError(f"path {text!r} is not in the store {store_dir!r}")
        basename = text[len(prefix) :]
        if "/" in basename:
            raise NotInStoreError(f"path {text!r} is not directly inside {store_dir!r}")
        _check_basename(basename, whole=text)
        return cls(
            store_dir=store_dir, hash_part=basename[:HASH_LEN], name=basename[HASH_LEN + 1 :]
        )

    @classmethod
    def from_basename(cls, basename: str, store_dir: str = STORE_DIR) -> StorePath:
        """Parse ``<hash>-<name>`` (as in realisation ``outPath``) into a path in `store_dir`."""
        if "/" in basename:
            raise NotInStoreError(f"store path basename {basename!r} contains '/'")
        _check_basename(basename, whole=basename)
        return cls(
            store_dir=store_dir, hash_part=basename[:HASH_LEN], name=basename[HASH_LEN + 1 :]
        )

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def is_derivation(self) -> bool:
        return self.name.endswith(DRV_EXTENSION)

    @property
    def drv_name(self) -> str:
        """The name without ``.drv``: the derivation's name (used by serve cmd 8)."""
        if not self.is_derivation:
            raise ValueError(f"{self} is not a derivation")
        return self.name[: -len(DRV_EXTENSION)]

    @property
    def sort_key(self) -> str:
        return self.basename

    def __str__(self) -> str:
        return f"{self.store_dir}/{self.hash_part}-{self.name}"

    def __lt__(self, other: StorePath) -> bool:
        return self.basename < other.basename

    def __le__(self, other: StorePath) -> bool:
        return self.basename <= other.basename

    def __gt__(self, other: StorePath) -> bool:
        return self.basename > other.basename

    def __ge__(self, other: StorePath) -> bool:
        return self.basename >= other.basename
