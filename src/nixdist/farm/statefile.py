"""The farm's ``state.json``: which builders exist, their specs, ports, sshd pids, namespaces.

Format (version 1)::

    {"version": 1, "alias_prefix": "nixdist-",
     "builders": [{"name": "b1", "systems": ["x86_64-linux"], "features": [], "mandatory": [],
                   "jobs": 1, "speed": 1, "nix": null, "user": null, "trusted": true,
                   "scheme": "ssh", "port": 40123, "pid": 5170, "mount_ns": 4026532177},
                  ...]}

``pid`` and ``mount_ns`` are null while a builder is stopped; ``nix`` is null for a builder
running the host's Nix; ``user`` null for root. ``nix``, ``user``, ``trusted`` and ``scheme``
may be missing (files from before they existed: the defaults). The file is
replaced atomically, so a reader never sees half of it. Every value is checked again when
read (`make_spec`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.farm.errors import FarmError
from nixdist.farm.spec import BuilderSpec, check_alias_prefix, make_spec

if TYPE_CHECKING:
    from pathlib import Path

STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderRecord:
    """What the state file keeps about one builder."""

    spec: BuilderSpec
    port: int
    pid: int | None = None
    mount_ns: int | None = None


@dataclass(slots=True, kw_only=True)
class FarmState:
    """The whole state file, changed in place while the farm lock is held."""

    alias_prefix: str
    records: list[BuilderRecord] = field(default_factory=list)

    def index(self, name: str) -> int:
        for i, record in enumerate(self.records):
            if record.spec.name == name:
                return i
        known = ", ".join(r.spec.name for r in self.records) or "none"
        raise FarmError(f"no builder named {name!r} in this farm (builders: {known})")

    def record(self, name: str) -> BuilderRecord:
        return self.records[self.index(name)]


def encode_state(state: FarmState) -> str:
    data = {
        "version": STATE_VERSION,
        "alias_prefix": state.alias_prefix,
        "builders": [
            {
                "name": r.spec.name,
                "systems": list(r.spec.systems),
                "features": sorted(r.spec.supported_features),
                "mandatory": sorted(r.spec.mandatory_features),
                "jobs": r.spec.max_jobs,
                "speed": r.spec.speed_factor,
                "nix": r.spec.nix,
                "user": r.spec.user,
                "trusted": r.spec.trusted,
                "scheme": str(r.spec.scheme),
                "port": r.port,
                "pid": r.pid,
                "mount_ns": r.mount_ns,
            }
            for r in state.records
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def decode_state(text: str, *, source: str) -> FarmState:
    try:
        return _decode(json.loads(text), source=source)
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"corrupt farm state: {err!r}", file=source) from None


def load_state(path: Path, *, default_prefix: str) -> FarmState:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return FarmState(alias_prefix=default_prefix)
    return decode_state(text, source=str(path))


def _decode(data: object, *, source: str) -> FarmState:
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError(f"expected a JSON object with version {STATE_VERSION}")
    prefix = data["alias_prefix"]
    if not isinstance(prefix, str):
        raise TypeError("alias_prefix is not a string")
    check_alias_prefix(prefix, source=source)
    records: list[BuilderRecord] = []
    for item in data["builders"]:
        spec = make_spec(
            item["name"],
            systems=list(item["systems"]),
            features=item["features"],
            mandatory=item["mandatory"],
            jobs=_int(item["jobs"]),
            speed=_int(item["speed"]),
            nix=_opt_str(item.get("nix")),
            user=_opt_str(item.get("user")),
            trusted=_bool(item.get("trusted", True)),
            scheme=_opt_str(item.get("scheme")) or "ssh",
            source=source,
        )
        records.append(
            BuilderRecord(
                spec=spec,
                port=_int(item["port"]),
                pid=_opt_int(item["pid"]),
                mount_ns=_opt_int(item["mount_ns"]),
            )
        )
    return FarmState(alias_prefix=prefix, records=records)


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"{value!r} is not an integer")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"{value!r} is not a boolean")


def _opt_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{value!r} is not a string")


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)
