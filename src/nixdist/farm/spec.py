"""What a farm builder is: its name, systems, features, job slots and speed.

A builder is described on the command line by ``--builder SPEC`` (repeatable)::

    NAME[:KEY=VALUE[;KEY=VALUE...]]

    b1
    b2:features=big-parallel;jobs=2
    b3:systems=x86_64-linux,aarch64-linux;speed=2
    b4:mandatory=benchmark
    b5:nix=2.34
    b6:user=nix;trusted=false
    b7:scheme=ssh-ng

or in a TOML farm file (``--config farm.toml``)::

    alias_prefix = "nixdist-"        # optional; ssh aliases are <prefix><name>

    [builders.b1]
    jobs = 2

    [builders.b2]
    systems = ["x86_64-linux", "aarch64-linux"]
    features = ["big-parallel"]
    mandatory = ["benchmark"]
    jobs = 2
    speed = 2

    [builders.b3]
    nix = "2.26"
    user = "nix"
    trusted = false               # a TOML boolean
    scheme = "ssh-ng"

Keys (the same in both forms; lists are comma-separated on the command line):

=========  ==========================================================  ==================
key        meaning                                                     default
=========  ==========================================================  ==================
systems    system types; the first is the builder's ``system``, the    the host's system
           rest its ``extra-platforms`` (any string, e.g.               (x86_64-linux)
           ``aarch64-linux``: the builder believes it can build it)
features   supported system features (machines field 6)                none
mandatory  mandatory system features (machines field 7)                none
jobs       max jobs (machines field 4, and the builder's max-jobs)     1
speed      speed factor (machines field 5; an integer, as in Nix 2.8)  1
nix        the Nix the builder runs: ``2.8``, ``2.26`` or ``2.34``     the host's Nix
           (a TOML string), in a Debian root filesystem of that
           version (`nixdist.farm.rootfs`)
user       clients log in as this ordinary user (not root): the farm   root
           makes it on the builder (home ``/home/NAME`` with the
           farm's key, shell ``/bin/bash``), runs a ``nix-daemon``
           (build users in group ``nixbld``) that owns the store, and
           lists the machine as ``ssh://NAME@<alias>``
trusted    whether ``user`` is in the builder's ``trusted-users``      true
           (``true``/``false``; false needs ``user``): an untrusted
           user cannot add unsigned paths, so builds cannot go there
scheme     ``ssh`` (``nix-store --serve``) or ``ssh-ng``                ssh
           (``nix-daemon --stdio``): the machines file's URI scheme
=========  ==========================================================  ==================

Builders with a ``user`` get accounts of their own: the farm binds generated ``/etc/passwd``
and ``/etc/group`` into the builder (its root's files with ``NAME`` and the build users
``nixbld1`` … added, on user and group ids unique to the builder, since Nix kills every process
of a build user before it uses one) and ``/home`` (``builders/<name>/homes``).

The builder's own ``system-features`` are ``features`` and ``mandatory`` together, so a
derivation that needs a feature the builder lacks fails there too, as on a real machine.

``--count N`` stands for ``b1`` … ``bN`` with the defaults. Sources combine in the order
``--config``, then ``--count`` (names not defined yet), then each ``--builder`` (replacing
a builder of the same name, or adding one), see `combine_specs`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.farm.releases import parse_nix_version
from nixdist.state.config import host_system

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

DEFAULT_ALIAS_PREFIX: Final = "nixdist-"

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.-]{0,32}")
_SYSTEM_RE: Final = re.compile(r"[A-Za-z0-9_.]+-[A-Za-z0-9_.-]+")
_FEATURE_RE: Final = re.compile(r"[A-Za-z0-9_.+-]+")
_USER_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_RESERVED_USERS: Final = frozenset({"root", "sshd", "nobody", "daemon", "nixbld"})
_KEYS: Final = (
    "systems",
    "features",
    "mandatory",
    "jobs",
    "speed",
    "nix",
    "user",
    "trusted",
    "scheme",
)
_BOOLEANS: Final = {"true": True, "false": False}


class Scheme(StrEnum):
    """How clients reach a builder: the scheme of its store URI in the machines file."""

    SSH = "ssh"  # nix-store --serve
    SSH_NG = "ssh-ng"  # nix-daemon --stdio (the worker protocol)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderSpec:
    """One farm builder as the user asked for it. Build it with `make_spec` or a parser."""

    name: str
    systems: tuple[str, ...]
    supported_features: frozenset[str] = frozenset()
    mandatory_features: frozenset[str] = frozenset()
    max_jobs: int = 1
    speed_factor: int = 1
    #: The Nix version the builder runs (`nixdist.farm.releases`), None for the host's Nix.
    nix: str | None = None
    #: The ordinary user clients log in as; None for root.
    user: str | None = None
    #: Whether `user` is in the builder's trusted-users (always true for root).
    trusted: bool = True
    scheme: Scheme = Scheme.SSH

    @property
    def login(self) -> str:
        """The user clients log in as."""
        return self.user or "root"

    @property
    def system(self) -> str:
        return self.systems[0]

    @property
    def extra_platforms(self) -> tuple[str, ...]:
        return self.systems[1:]

    @property
    def system_features(self) -> frozenset[str]:
        """What the builder's own nix.conf declares: supported and mandatory features."""
        return self.supported_features | self.mandatory_features


@dataclass(frozen=True, slots=True, kw_only=True)
class FarmConfig:
    """The contents of a TOML farm file."""

    alias_prefix: str | None
    builders: tuple[BuilderSpec, ...]


def _check_systems(name: str, systems: Sequence[str] | None, *, source: str) -> tuple[str, ...]:
    """The builder's systems, checked; the host's when none are given."""
    systems_t = tuple(systems) if systems is not None else (host_system(),)
    if not systems_t:
        raise ConfigError(f"builder {name!r}: at least one system is needed", file=source)
    if len(set(systems_t)) != len(systems_t):
        raise ConfigError(f"builder {name!r}: a system is listed twice", file=source)
    for system in systems_t:
        if not _SYSTEM_RE.fullmatch(system):
            raise ConfigError(
                f"builder {name!r}: {system!r} is not a system type like x86_64-linux",
                file=source,
                field="systems",
            )
    return systems_t


def make_spec(
    name: str,
    *,
    systems: Sequence[str] | None = None,
    features: Iterable[str] = (),
    mandatory: Iterable[str] = (),
    jobs: int = 1,
    speed: int = 1,
    nix: str | None = None,
    user: str | None = None,
    trusted: bool = True,
    scheme: str = "ssh",
    source: str = "builder",
) -> BuilderSpec:
    """Check every value and build a `BuilderSpec`; `source` names the origin in errors."""
    check_name(name, source=source)
    systems_t = _check_systems(name, systems, source=source)
    supported = frozenset(features)
    required = frozenset(mandatory)
    for feature in supported | required:
        if not _FEATURE_RE.fullmatch(feature):
            raise ConfigError(
                f"builder {name!r}: {feature!r} is not a valid feature name", file=source
            )
    if jobs < 1:
        raise ConfigError(
            f"builder {name!r}: jobs must be an integer >= 1, not {jobs!r}",
            file=source,
            field="jobs",
        )
    if speed < 1:
        raise ConfigError(
            f"builder {name!r}: speed must be an integer >= 1 (Nix 2.8 reads an integer),"
            f" not {speed!r}",
            file=source,
            field="speed",
        )
    scheme_v = _check_login(name, user=user, trusted=trusted, scheme=scheme, source=source)
    return BuilderSpec(
        name=name,
        systems=systems_t,
        supported_features=supported,
        mandatory_features=required,
        max_jobs=jobs,
        speed_factor=speed,
        nix=None if nix is None else parse_nix_version(nix, source=source),
        user=user,
        trusted=trusted,
        scheme=scheme_v,
    )


def _check_login(name: str, *, user: str | None, trusted: bool, scheme: str, source: str) -> Scheme:
    """Check the keys of how clients log in; returns the scheme."""
    if user is not None and (not _USER_RE.fullmatch(user) or user in _RESERVED_USERS):
        raise ConfigError(
            f"builder {name!r}: {user!r} is not a user name the farm can make (lower-case"
            " letters, digits, '_', '-'; at most 31; not root, sshd, nobody, daemon, nixbld)",
            file=source,
            field="user",
        )
    if not trusted and user is None:
        raise ConfigError(
            f"builder {name!r}: trusted=false needs user=NAME (root is always trusted)",
            file=source,
            field="trusted",
        )
    try:
        return Scheme(scheme)
    except ValueError:
        raise ConfigError(
            f"builder {name!r}: scheme must be ssh or ssh-ng, not {scheme!r}",
            file=source,
            field="scheme",
        ) from None


def check_name(name: object, *, source: str = "builder") -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a builder name (letters, digits, '_', '.', '-'; at most 32,"
            " starting with a letter or digit)",
            file=source,
        )


def check_alias_prefix(prefix: str, *, source: str = "alias prefix") -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"{prefix!r} is not an alias prefix (letters, digits, '_', '.', '-'; at most 32)",
            file=source,
        )


def plain_specs(count: int) -> tuple[BuilderSpec, ...]:
    """``b1`` … ``b<count>``, each with the defaults."""
    if count < 0:
        raise ConfigError(f"--count must be >= 0, not {count}", file="--count")
    return tuple(make_spec(f"b{i}") for i in range(1, count + 1))


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_int(name: str, key: str, value: str, source: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"builder {name!r}: {key} must be an integer, not {value!r}", file=source, field=key
        ) from None


def _parse_bool(name: str, key: str, value: str, source: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ConfigError(
            f"builder {name!r}: {key} must be true or false, not {value!r}", file=source, field=key
        ) from None


def parse_builder_option(text: str) -> BuilderSpec:
    """Parse one ``--builder`` value: ``NAME[:KEY=VALUE[;KEY=VALUE...]]``."""
    source = f"--builder {text!r}"
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    check_name(name, source=source)
    values: dict[str, str] = {}
    for item in rest.split(";"):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError(f"{item.strip()!r} is not KEY=VALUE", file=source)
        if key not in _KEYS:
            raise ConfigError(f"unknown key {key!r}; known: {', '.join(_KEYS)}", file=source)
        if key in values:
            raise ConfigError(f"key {key!r} given twice", file=source)
        values[key] = value.strip()
    return make_spec(
        name,
        systems=_split_list(values["systems"]) if "systems" in values else None,
        features=_split_list(values.get("features", "")),
        mandatory=_split_list(values.get("mandatory", "")),
        jobs=_parse_int(name, "jobs", values["jobs"], source) if "jobs" in values else 1,
        speed=_parse_int(name, "speed", values["speed"], source) if "speed" in values else 1,
        nix=values.get("nix"),
        user=values.get("user") or None,
        trusted=_parse_bool(name, "trusted", values["trusted"], source)
        if "trusted" in values
        else True,
        scheme=values.get("scheme", "ssh"),
        source=source,
    )


def _str_list(value: object, *, name: str, key: str, source: str) -> list[str]:
    if isinstance(value, str):
        return _split_list(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise ConfigError(f"builder {name!r}: {key} must be a list of strings", file=source, field=key)


def _int_value(value: object, *, name: str, key: str, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"builder {name!r}: {key} must be an integer", file=source, field=key)


_STR_EXAMPLES: Final = {"nix": "2.34", "user": "nix", "scheme": "ssh-ng"}


def _opt_str_value(value: object, *, name: str, key: str, source: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(
        f'builder {name!r}: {key} must be a string (like "{_STR_EXAMPLES[key]}"), not {value!r}',
        file=source,
        field=key,
    )


def _bool_value(value: object, *, name: str, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(
        f"builder {name!r}: {key} must be true or false (a TOML boolean), not {value!r}",
        file=source,
        field=key,
    )


def parse_farm_toml(text: str, *, source: str = "<farm.toml>") -> FarmConfig:
    """Parse a TOML farm file (format in the module docstring)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(err), file=source) from None
    unknown = set(data) - {"alias_prefix", "builders"}
    if unknown:
        raise ConfigError(f"unknown top-level keys: {', '.join(sorted(unknown))}", file=source)
    prefix = data.get("alias_prefix")
    if prefix is not None:
        if not isinstance(prefix, str):
            raise ConfigError("alias_prefix must be a string", file=source)
        check_alias_prefix(prefix, source=source)
    builders = data.get("builders", {})
    if not isinstance(builders, dict):
        raise ConfigError("[builders] must be a table of tables", file=source)
    specs: list[BuilderSpec] = []
    for name, table in builders.items():
        if not isinstance(table, dict):
            raise ConfigError(f"builders.{name} must be a table", file=source)
        specs.append(_spec_from_table(str(name), table, source))
    return FarmConfig(alias_prefix=prefix, builders=tuple(specs))


def _spec_from_table(name: str, table: Mapping[str, object], source: str) -> BuilderSpec:
    unknown = set(table) - set(_KEYS)
    if unknown:
        raise ConfigError(
            f"builder {name!r}: unknown keys {', '.join(sorted(unknown))};"
            f" known: {', '.join(_KEYS)}",
            file=source,
        )
    systems = table.get("systems")
    return make_spec(
        name,
        systems=None
        if systems is None
        else _str_list(systems, name=name, key="systems", source=source),
        features=_str_list(table.get("features", []), name=name, key="features", source=source),
        mandatory=_str_list(table.get("mandatory", []), name=name, key="mandatory", source=source),
        jobs=_int_value(table.get("jobs", 1), name=name, key="jobs", source=source),
        speed=_int_value(table.get("speed", 1), name=name, key="speed", source=source),
        nix=_opt_str_value(table.get("nix"), name=name, key="nix", source=source),
        user=_opt_str_value(table.get("user"), name=name, key="user", source=source),
        trusted=_bool_value(table.get("trusted", True), name=name, key="trusted", source=source),
        scheme=_opt_str_value(table.get("scheme"), name=name, key="scheme", source=source) or "ssh",
        source=source,
    )


def load_farm_toml(path: Path) -> FarmConfig:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", file=str(path)) from None
    return parse_farm_toml(text, source=str(path))


def combine_specs(
    *,
    config: Sequence[BuilderSpec] = (),
    count: int | None = None,
    overrides: Sequence[BuilderSpec] = (),
) -> tuple[BuilderSpec, ...] | None:
    """The builders asked for: `config`, then ``b1..b<count>`` not yet named, then `overrides`.

    Returns None when nothing was asked for (the farm then keeps the builders it has).
    """
    if not config and count is None and not overrides:
        return None
    chosen: dict[str, BuilderSpec] = {}
    for spec in config:
        if spec.name in chosen:
            raise ConfigError(f"builder {spec.name!r} defined twice")
        chosen[spec.name] = spec
    for spec in plain_specs(count or 0):
        chosen.setdefault(spec.name, spec)
    for spec in overrides:
        chosen[spec.name] = spec
    return tuple(chosen.values())
