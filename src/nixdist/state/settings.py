"""nixdist's own settings, from the environment (every one has a default; no file is needed).

=========================  ========  ============================================================
variable                   default   meaning
=========================  ========  ============================================================
NIXDIST_STATE_DIR          see       state directory (`nixdist.state.paths`)
NIXDIST_CONNECT_TIMEOUT    15        seconds a builder may take to answer: ssh's connect, the
                                     serve greeting, a load probe; also how soon a frozen
                                     builder is given up (ssh keep-alives: a third of it, 3 times)
NIXDIST_PROBE_INTERVAL     5         seconds a builder's load report is reused; 0: never probe
NIXDIST_MIN_FREE_DISK      1G        a builder with less free space on its store is skipped
                                     (bytes, or with a K/M/G/T suffix; 0 disables the check)
NIXDIST_MAX_ATTEMPTS       3         builders one build may be tried on when builders fail
                                     under it (lost connection, crash) before giving up
NIXDIST_SLOT_WAIT          5         seconds the hook waits for a busy builder's slot before it
                                     answers ``postpone`` (which Nix retries only after its
                                     build-poll-interval, 5 s); Nix's build loop waits meanwhile.
                                     0: postpone at once, as build-remote does
=========================  ========  ============================================================

A value that is not valid is a `ConfigError` naming the variable, never a silent default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_CONNECT_TIMEOUT_S: Final = 15.0
DEFAULT_PROBE_INTERVAL_S: Final = 5.0
DEFAULT_MIN_FREE_DISK: Final = 1 << 30
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_SLOT_WAIT_S: Final = 5.0
_SIZE: Final = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The settings in effect."""

    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S
    min_free_disk: int = DEFAULT_MIN_FREE_DISK
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    slot_wait_s: float = DEFAULT_SLOT_WAIT_S

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def seconds(name: str, default: float, *, zero_ok: bool) -> float:
            text = environ.get(name)
            if text is None:
                return default
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (0 <= value < math.inf) or (value == 0 and not zero_ok):
                kind = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
                raise ConfigError(f"{text!r} is not {kind}", file=name)
            return value

        attempts_text = environ.get("NIXDIST_MAX_ATTEMPTS")
        attempts = DEFAULT_MAX_ATTEMPTS
        if attempts_text is not None:
            if not attempts_text.strip().isdigit() or int(attempts_text) < 1:
                raise ConfigError(
                    f"{attempts_text!r} is not a whole number >= 1", file="NIXDIST_MAX_ATTEMPTS"
                )
            attempts = int(attempts_text)
        disk_text = environ.get("NIXDIST_MIN_FREE_DISK")
        return cls(
            connect_timeout_s=seconds(
                "NIXDIST_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S, zero_ok=False
            ),
            probe_interval_s=seconds(
                "NIXDIST_PROBE_INTERVAL", DEFAULT_PROBE_INTERVAL_S, zero_ok=True
            ),
            min_free_disk=(
                DEFAULT_MIN_FREE_DISK
                if disk_text is None
                else parse_size(disk_text, name="NIXDIST_MIN_FREE_DISK")
            ),
            max_attempts=attempts,
            slot_wait_s=seconds("NIXDIST_SLOT_WAIT", DEFAULT_SLOT_WAIT_S, zero_ok=True),
        )


def parse_size(text: str, *, name: str) -> int:
    """``512M`` → 536870912: bytes, with an optional binary K/M/G/T suffix."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a size (like 512M or 2G)", file=name)
    return int(match[1]) << (10 * _UNITS[match[2].upper()])
