"""nixdist's settings: ``/etc/nixdist/nixdist.toml`` (or ``$NIXDIST_CONFIG``), then the
environment, then the defaults. Every setting is listed once, in `SETTINGS`; README's table
is checked against it by a test.

The file is optional, and the place for settings a ``nix-daemon`` should see (its environment
is awkward to change). Each key has a variable, which overrides the file for one process::

    # /etc/nixdist/nixdist.toml
    connect-timeout = 10
    min-free-disk = "5G"
    slot-wait = 2

A bad value, an unknown key or a file that is not TOML is a `ConfigError` naming the file
(and line, where it is known) or the variable: never a silent default. Reading the settings
costs a ``stat`` when there is no file; ``tomllib`` is imported only when there is one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nixdist.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_CONFIG_FILE: Final = Path("/etc/nixdist/nixdist.toml")
CONFIG_ENV: Final = "NIXDIST_CONFIG"

_SIZE: Final = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}

Value = str | int | float | bool


def parse_size(text: str, *, name: str) -> int:
    """``512M`` → 536870912: bytes, with an optional binary K/M/G/T suffix."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a size (like 512M or 2G)", file=name)
    return int(match[1]) << (10 * _UNITS[match[2].upper()])


def _amount(unit: str, *, zero_ok: bool) -> Callable[[Value, str], float]:
    """A parser of a finite number of `unit` (seconds, days), 0 allowed with `zero_ok`."""

    def parse(value: Value, name: str) -> float:
        try:
            amount = math.nan if isinstance(value, bool) else float(value)
        except ValueError:
            amount = math.nan
        if not (0 <= amount < math.inf) or (amount == 0 and not zero_ok):
            kind = f"a number of {unit} >= 0" if zero_ok else f"a positive number of {unit}"
            raise ConfigError(f"{value!r} is not {kind}", file=name)
        return amount

    return parse


def _count(value: Value, name: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{value!r} is not a whole number >= 1", file=name)
    return int(text)


def _size(value: Value, name: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a size (like 512M or 2G)", file=name)
    return parse_size(str(value), name=name)


def _text(value: Value, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{value!r} is not a non-empty string", file=name)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One setting: its key in the file, its variable, its default (as written) and meaning."""

    field: str  # the `Settings` attribute
    key: str
    env: str
    default: str
    meaning: str
    parse: Callable[[Value, str], object]


SETTINGS: Final = (
    Setting(
        field="state_dir",
        key="state-dir",
        env="NIXDIST_STATE_DIR",
        default="/var/lib/nixdist",
        meaning="the state directory (history, health, load reports, ssh masters); for a user "
        "other than root `$XDG_STATE_HOME/nixdist`",
        parse=_text,
    ),
    Setting(
        field="connect_timeout_s",
        key="connect-timeout",
        env="NIXDIST_CONNECT_TIMEOUT",
        default="15",
        meaning="seconds a builder may take to answer (ssh's connect, the store's greeting, a "
        "load probe); ssh keep-alives give a frozen builder up after about as long",
        parse=_amount("seconds", zero_ok=False),
    ),
    Setting(
        field="probe_interval_s",
        key="probe-interval",
        env="NIXDIST_PROBE_INTERVAL",
        default="5",
        meaning="seconds a builder's load report is reused; 0: never ask for one",
        parse=_amount("seconds", zero_ok=True),
    ),
    Setting(
        field="min_free_disk",
        key="min-free-disk",
        env="NIXDIST_MIN_FREE_DISK",
        default="1G",
        meaning="a builder with less free space on its store is skipped (bytes, or K/M/G/T); "
        "0: no check",
        parse=_size,
    ),
    Setting(
        field="max_attempts",
        key="max-attempts",
        env="NIXDIST_MAX_ATTEMPTS",
        default="3",
        meaning="builders one build may be tried on when builders fail under it",
        parse=_count,
    ),
    Setting(
        field="slot_wait_s",
        key="slot-wait",
        env="NIXDIST_SLOT_WAIT",
        default="5",
        meaning="seconds the hook waits for a busy builder's slot before answering `postpone` "
        "(which Nix retries only after its build-poll-interval); 0: postpone at once",
        parse=_amount("seconds", zero_ok=True),
    ),
    Setting(
        field="history_days",
        key="history-days",
        env="NIXDIST_HISTORY_DAYS",
        default="30",
        meaning="days the history (decisions, build attempts) is kept; the hook prunes it once "
        "a day, `nixdist history --prune` at once; 0: kept forever",
        parse=_amount("days", zero_ok=True),
    ),
    Setting(
        field="dashboard_token",
        key="dashboard-token",
        env="NIXDIST_DASHBOARD_TOKEN",
        default="",
        meaning="the bearer token `nixdist dashboard` requires when it listens off loopback",
        parse=_text,
    ),
)
_BY_KEY: Final = {s.key: s for s in SETTINGS}


def _default_state_dir(environ: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/nixdist")
    xdg = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/")) / ".local" / "state")
    return Path(xdg) / "nixdist"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The settings in effect (see `SETTINGS` for each one's meaning)."""

    state_dir: Path
    connect_timeout_s: float = 15.0
    probe_interval_s: float = 5.0
    min_free_disk: int = 1 << 30
    max_attempts: int = 3
    slot_wait_s: float = 5.0
    history_days: float = 30.0
    dashboard_token: str | None = None
    source: Path | None = None  # the file read, if any


def config_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def _read_file(path: Path) -> dict[str, Value]:
    import tomllib  # noqa: PLC0415 - only when there is a file

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read it: {err.strerror}", file=str(path)) from None
    try:
        table = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"not TOML: {err}", file=str(path)) from None
    values: dict[str, Value] = {}
    for key, value in table.items():
        where = f"{path}:{_line_of(text, key)}: {key}"
        if key not in _BY_KEY:
            known = ", ".join(sorted(_BY_KEY))
            raise ConfigError(f"unknown setting (known: {known})", file=where)
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{value!r} is not a single value", file=where)
        values[key] = value
    return values


def _line_of(text: str, key: str) -> int | str:
    pattern = re.compile(rf"^[ \t]*\"?{re.escape(key)}\"?[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return "?" if match is None else text.count("\n", 0, match.start()) + 1


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in effect for a process with `environ`: its variables over the file."""
    env = os.environ if environ is None else environ
    path = config_file(env)
    from_file: dict[str, Value] = {}
    source = None
    if env.get(CONFIG_ENV) or path.exists():
        from_file = _read_file(path)
        source = path
    values: dict[str, Any] = {}  # each value parsed by its own setting's parser
    for setting in SETTINGS:
        if text := env.get(setting.env):  # an empty variable is an unset one
            values[setting.field] = setting.parse(text, setting.env)
        elif setting.key in from_file:
            text_of = f"{path}:{setting.key}"
            values[setting.field] = setting.parse(from_file[setting.key], text_of)
    state = values.pop("state_dir", None)
    return Settings(
        state_dir=_default_state_dir(env) if state is None else Path(str(state)),
        source=source,
        **values,
    )
