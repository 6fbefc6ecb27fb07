"""Cryptographic hashes as Nix writes them.

A `Hash` is an algorithm plus a digest. Nix writes it in several forms, all accepted by
`Hash.parse`:

=====================  ==========================================  ===================
form                   example (SHA-256)                           where seen
=====================  ==========================================  ===================
``algo:nix32``         ``sha256:0x6gwcszhf95qg9gy320zn0k…``         serve cmd 2 narHash
``algo:base16``        ``sha256:868f…31ff``                         DrvOutput ids
``algo:base64``        ``sha256:47DEQpj8HBSa+/TImW+5JC…=``          rare
SRI ``algo-base64``    ``sha256-47DEQpj8HBSa+/TImW+5JCeuQeRk…=``     newer Nix, narinfo
bare base16/nix32/b64  ``868f…31ff`` (needs the algorithm given)    cmd 9, .drv hashes
=====================  ==========================================  ===================

Which encoding an unprefixed text uses is decided by its length, which is different for each
encoding of each algorithm (SHA-256: 64 base16, 52 nix32, 44 base64 characters). Base16 is
accepted in either case; nix32 and base64 must be canonical.

`Hash.render()` gives the prefixed nix32 form Nix uses for narHash (``sha256:…``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from dataclasses import dataclass
from typing import Final

from nixdist.errors import ParseError
from nixdist.model import nixbase32


class HashError(ParseError):
    """Text that does not denote a hash."""


class HashAlgo(enum.StrEnum):
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def size(self) -> int:
        """Digest size in bytes."""
        return _SIZES[self]


_BASE16: Final = frozenset("0123456789abcdefABCDEF")
_SIZES: Final = {HashAlgo.MD5: 16, HashAlgo.SHA1: 20, HashAlgo.SHA256: 32, HashAlgo.SHA512: 64}


_ALGO_NAMES: Final = frozenset(HashAlgo.__members__.values())


def _base64_len(size: int) -> int:
    return (size + 2) // 3 * 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Hash:
    """A digest and its algorithm. Build it with `Hash.parse` or `Hash.of`."""

    algo: HashAlgo
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != self.algo.size:
            raise HashError(
                f"a {self.algo} digest has {self.algo.size} bytes, not {len(self.digest)}"
            )

    @classmethod
    def of(cls, algo: HashAlgo, data: bytes) -> Hash:
        """Hash `data` with `algo`."""
        return cls(algo=algo, digest=hashlib.new(str(algo), data).digest())

    @classmethod
    def parse(cls, text: str, algo: HashAlgo | None = None) -> Hash:
        """Parse any of the forms in the module docstring.

        `algo` is required for a bare digest; for a prefixed one it must match the prefix.
        """
        named, sri, rest = _split_prefix(text)
        if named is not None:
            if algo is not None and named != algo:
                raise HashError(f"hash {text!r} is not a {algo} hash")
            algo = named
        if algo is None:
            raise HashError(f"hash {text!r} does not name its algorithm")
        size = algo.size
        if sri and len(rest) != _base64_len(size):
            raise HashError(f"SRI hash {text!r} has the wrong length for {algo}")
        if len(rest) == 2 * size:
            if not _BASE16.issuperset(rest):
                raise HashError(f"invalid base16 hash {text!r}")
            return cls(algo=algo, digest=bytes.fromhex(rest))
        if len(rest) == nixbase32.encoded_len(size):
            try:
                return cls(algo=algo, digest=nixbase32.decode(rest, size))
            except nixbase32.Nix32Error as err:
                raise HashError(f"invalid nix32 hash {text!r}: {err}") from None
        if len(rest) == _base64_len(size):
            return cls(algo=algo, digest=_decode_base64(rest, text))
        raise HashError(f"hash {text!r} has the wrong length for {algo}")

    def to_base16(self) -> str:
        return self.digest.hex()

    def to_nix32(self) -> str:
        return nixbase32.encode(self.digest)

    def to_base64(self) -> str:
        return base64.b64encode(self.digest).decode("ascii")

    def to_sri(self) -> str:
        return f"{self.algo}-{self.to_base64()}"

    def render(self) -> str:
        """``algo:nix32``, the form Nix prints for narHash."""
        return f"{self.algo}:{self.to_nix32()}"

    def render_base16(self) -> str:
        """``algo:base16``, the form of DrvOutput ids."""
        return f"{self.algo}:{self.to_base16()}"

    def __str__(self) -> str:
        return self.render()


def _split_prefix(text: str) -> tuple[HashAlgo | None, bool, str]:
    """``(algo named by a prefix or None, whether it is SRI, the digest text)``."""
    prefix, sep, rest = text.partition(":")
    if sep:
        sri = False
    else:
        prefix, sep, rest = text.partition("-")
        if not sep or prefix not in _ALGO_NAMES:
            return None, False, text
        sri = True
    try:
        return HashAlgo(prefix), sri, rest
    except ValueError:
        raise HashError(f"unknown hash algorithm {prefix!r} in {text!r}") from None


def _decode_base64(data: str, text: str) -> bytes:
    try:
        digest = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HashError(f"invalid base64 hash {text!r}") from None
    if base64.b64encode(digest).decode("ascii") != data:
        raise HashError(f"non-canonical base64 hash {text!r}")
    return digest
