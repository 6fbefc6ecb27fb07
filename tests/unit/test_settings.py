"""nixdist's settings: the config file, the variables over it, the defaults, and README's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ConfigError
from nixdist.settings import SETTINGS, Settings, load_settings, parse_size
from nixdist.state.paths import state_dir

README = Path(__file__).resolve().parents[2] / "README.md"


def _env(tmp_path: Path, text: str | None = None, **variables: str) -> dict[str, str]:
    config = tmp_path / "nixdist.toml"
    if text is not None:
        config.write_text(text)
    return {"NIXDIST_CONFIG": str(config), "HOME": str(tmp_path), **variables}


def test_without_a_file_the_defaults_hold(tmp_path: Path) -> None:
    env = {"NIXDIST_CONFIG": "", "HOME": str(tmp_path)}
    settings = load_settings({**env, "NIXDIST_STATE_DIR": str(tmp_path / "s")})
    assert settings == Settings(state_dir=tmp_path / "s")
    assert settings.source is None


def test_the_file_sets_and_the_variables_override(tmp_path: Path) -> None:
    text = (
        'state-dir = "/srv/nixdist"\nconnect-timeout = 7\nmin-free-disk = "5G"\n'
        "slot-wait = 0\nmax-attempts = 5\nprobe-interval = 2.5\n"
    )
    settings = load_settings(_env(tmp_path, text, NIXDIST_SLOT_WAIT="1.5"))
    assert settings.state_dir == Path("/srv/nixdist")
    assert settings.connect_timeout_s == 7
    assert settings.min_free_disk == 5 << 30
    assert settings.slot_wait_s == 1.5  # the variable wins
    assert settings.max_attempts == 5
    assert settings.probe_interval_s == 2.5
    assert settings.source == tmp_path / "nixdist.toml"
    assert state_dir(_env(tmp_path, text)) == Path("/srv/nixdist")


def test_an_empty_variable_is_an_unset_one(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path, "slot-wait = 2\n", NIXDIST_SLOT_WAIT=""))
    assert settings.slot_wait_s == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connect-timeout = 0\n", r"nixdist.toml:connect-timeout: 0 is not a positive number"),
        ("\n\nslot-wait = -1\n", r"nixdist.toml:slot-wait: -1 is not a number of seconds"),
        ("max-attempts = 0\n", r"max-attempts: 0 is not a whole number >= 1"),
        ('min-free-disk = "lots"\n', r"min-free-disk: 'lots' is not a size"),
        ("\nconect-timeout = 3\n", r"nixdist.toml:2: conect-timeout: unknown setting"),
        ("slot-wait = [1]\n", r"nixdist.toml:1: slot-wait: \[1\] is not a single value"),
        ("slot-wait = \n", r"nixdist.toml: not TOML: .*line 1"),
    ],
)
def test_a_bad_file_is_named_with_its_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_env(tmp_path, text))


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings(_env(tmp_path))


def test_a_bad_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIXDIST_CONNECT_TIMEOUT: 'soon'"):
        load_settings(_env(tmp_path, "", NIXDIST_CONNECT_TIMEOUT="soon"))


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["", "K", "M", "G", "T"]))
def test_sizes_read_as_binary_multiples(number: int, unit: str) -> None:
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
    assert parse_size(f"{number}{unit}", name="x") == number << shift
    assert parse_size(f"{number}{unit.lower()}iB", name="x") == number << shift


def test_every_setting_is_in_readme_once_as_the_code_says() -> None:
    """README's settings table lists each setting's key, variable and default as here."""
    rows = re.findall(
        r"^\| `([a-z-]+)` \| `(NIXDIST_[A-Z_]+)` \| ([^|]*) \|", README.read_text(), re.MULTILINE
    )
    assert [(key, env, default.strip().strip("`")) for key, env, default in rows] == [
        (s.key, s.env, s.default or "none") for s in SETTINGS
    ]
