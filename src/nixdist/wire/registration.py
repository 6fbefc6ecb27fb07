"""The text ``nix-store --load-db`` and ``--register-validity --hash-given`` read (and
``--dump-db`` writes).

One record per path, every field a line (``decodeValidPathInfo`` and
``makeValidityRegistration`` in Nix's ``store-api.cc``, unchanged from 2.8 to 2.34)::

    /nix/store/<path>
    <NAR hash, base16 without prefix>      only with --hash-given (the dump always has it)
    <NAR size>
    <deriver or an empty line>
    <number of references>
    /nix/store/<reference>                 one line each

The format has no field for a content address or signatures: a path registered this way
records neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixdist.errors import WireError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nixdist.model.path_info import PathInfo


def encode_registration(infos: Iterable[PathInfo]) -> bytes:
    """The records for `infos`, hash and size given, in the order given."""
    lines: list[str] = []
    for info in infos:
        fields = [str(info.path), info.nar_hash.to_base16(), str(info.nar_size)]
        fields.append(str(info.deriver) if info.deriver is not None else "")
        refs = info.sorted_references()
        fields.append(str(len(refs)))
        fields.extend(map(str, refs))
        for field in fields:
            if "\n" in field:
                raise WireError(f"a newline in the registration of {info.path}: {field!r}")
        lines.extend(fields)
    return "".join(f"{line}\n" for line in lines).encode()
