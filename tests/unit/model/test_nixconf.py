"""nix.conf: line syntax, includes, extra- appends, aliases, which files, typed settings.

Facts from Nix 2.8 ``src/libutil/config.cc`` (applyConfig, Config::set, BaseSetting<...>::set)
and ``src/libstore/globals.cc`` (loadConfFile, getUserConfigFiles, MaxBuildJobsSetting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixdist.errors import ConfigError
from nixdist.model.nixconf import (
    NixConf,
    load_nix_conf,
    nix_conf_sources,
    nix_settings,
    parse_nix_conf,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def reader(
    files: Mapping[str, str], broken: frozenset[str] = frozenset()
) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        if path in broken:
            raise ConfigError("Permission denied", file=path)
        return files.get(path)

    return read


def conf(text: str, files: Mapping[str, str] | None = None) -> NixConf:
    return parse_nix_conf(text, source="/etc/nix/nix.conf", read_file=reader(files or {}))


def test_basic_lines() -> None:
    c = conf(
        "# comment\n"
        "builders = ssh://a x86_64-linux ; b   # trailing\n"
        "\n"
        "  system   =   aarch64-linux  \n"
        "max-jobs = 4\r\n"
        "empty =\n"
        "substituters =\thttps://a   https://b\n"
    )
    assert c.values == {
        "builders": "ssh://a x86_64-linux ; b",
        "system": "aarch64-linux",
        "max-jobs": "4",
        "empty": "",
        "substituters": "https://a https://b",
    }
    assert c.origins["system"] == ("/etc/nix/nix.conf", 4)


def test_later_lines_win() -> None:
    assert conf("system = a\nsystem = b").values["system"] == "b"


@pytest.mark.parametrize(
    "line",
    ["builders", "builders=x", "builders =x", "builders x = y", "include", "include a b", "= x"],
)
def test_illegal_lines(line: str) -> None:
    with pytest.raises(ConfigError) as info:
        conf(f"ok = 1\n{line}\n")
    assert str(info.value).startswith("/etc/nix/nix.conf:2: illegal configuration line")
    assert "\n" not in str(info.value)


def test_equals_as_a_name_is_still_a_name() -> None:
    # Nix only checks that the second word is "="; "= = x" sets a setting named "=".
    assert conf("= = x").values == {"=": "x"}


def test_includes_relative_to_the_including_file() -> None:
    files = {
        "/etc/nix/extra.conf": "system = i686-linux\n!include sub/more.conf\n",
        "/etc/nix/sub/more.conf": "max-jobs = 3\ninclude ../last.conf",
        "/etc/nix/last.conf": "builders = last",
    }
    c = conf("include extra.conf\nmax-jobs = 1\n!include /nowhere.conf", files)
    assert c.values == {"system": "i686-linux", "max-jobs": "1", "builders": "last"}
    assert c.origins["builders"] == ("/etc/nix/last.conf", 1)


def test_missing_include_is_an_error_unless_bang() -> None:
    with pytest.raises(ConfigError) as info:
        conf("\ninclude missing.conf")
    assert str(info.value) == (
        "/etc/nix/nix.conf:2: included file '/etc/nix/missing.conf' not found"
    )
    assert conf("!include missing.conf").values == {}


def test_unreadable_include_is_skipped_like_nix() -> None:
    c = parse_nix_conf(
        "include /secret.conf\nsystem = x",
        source="/etc/nix/nix.conf",
        read_file=reader({}, broken=frozenset({"/secret.conf"})),
    )
    assert c.values == {"system": "x"}


def test_include_cycle() -> None:
    files = {"/etc/nix/a.conf": "include b.conf", "/etc/nix/b.conf": "include a.conf"}
    with pytest.raises(ConfigError, match="include cycle"):
        conf("include a.conf", files)
    with pytest.raises(ConfigError, match="include cycle"):
        conf("include nix.conf", {"/etc/nix/nix.conf": "x = 1"})


def test_extra_appends_to_list_settings() -> None:
    c = conf(
        "system-features = kvm\n"
        "extra-system-features = big-parallel\n"
        "extra-system-features = nixos-test benchmark\n"
        "extra-substituters = https://c\n"
    )
    assert c.get("system-features", "default") == "kvm big-parallel nixos-test benchmark"
    # with no plain line, extra- appends to Nix's default
    assert c.get("substituters", "https://cache.nixos.org/") == "https://cache.nixos.org/ https://c"
    assert c.get("trusted-users", "root") == "root"


def test_setting_again_drops_earlier_appends() -> None:
    c = conf("extra-system-features = a\nsystem-features = b\nextra-system-features = c")
    assert c.get("system-features", "default") == "b c"


def test_extra_platforms_is_a_name_not_an_append() -> None:
    c = conf("extra-platforms = aarch64-linux\nextra-extra-platforms = armv7l-linux")
    assert c.values == {"extra-platforms": "aarch64-linux"}
    assert c.get("extra-platforms", "i686-linux") == "aarch64-linux armv7l-linux"


def test_extra_of_a_scalar_setting_is_just_an_unknown_name() -> None:
    c = conf("builders = a\nextra-builders = b\nextra-max-jobs = 3")
    assert c.get("builders", "") == "a"
    assert c.values["extra-builders"] == "b"
    assert c.values["extra-max-jobs"] == "3"


def test_aliases() -> None:
    c = conf("build-max-jobs = 5\nbuild-use-sandbox = false\nextra-build-sandbox-paths = /x")
    assert c.values == {"max-jobs": "5", "sandbox": "false"}
    assert c.get("sandbox-paths", "/bin/sh") == "/bin/sh /x"


def test_layering_with_base() -> None:
    first = conf("system = a\nmax-jobs = 2\nextra-system-features = kvm")
    second = parse_nix_conf(
        "system = b\nextra-system-features = perf",
        source="/root/.config/nix/nix.conf",
        read_file=reader({}),
        base=first,
    )
    assert second.values == {"system": "b", "max-jobs": "2"}
    assert second.get("system-features", "") == "kvm perf"
    assert first.values["system"] == "a"  # the base is not changed


# ---------------------------------------------------------------------------------------
# Which files


def test_sources_default() -> None:
    assert nix_conf_sources({"HOME": "/root"}) == [
        "/etc/nix/nix.conf",
        "/etc/xdg/nix/nix.conf",
        "/root/.config/nix/nix.conf",
    ]


def test_sources_xdg() -> None:
    env = {
        "NIX_CONF_DIR": "/opt/nix/etc/",
        "HOME": "/home/u",
        "XDG_CONFIG_HOME": "/cfg",
        "XDG_CONFIG_DIRS": "/d1::/d2",
    }
    assert nix_conf_sources(env) == [
        "/opt/nix/etc/nix.conf",
        "/d2/nix/nix.conf",
        "/d1/nix/nix.conf",
        "/cfg/nix/nix.conf",
    ]


def test_sources_nix_user_conf_files() -> None:
    env = {"HOME": "/root", "NIX_USER_CONF_FILES": "/u1.conf:/u2.conf"}
    assert nix_conf_sources(env) == ["/etc/nix/nix.conf", "/u2.conf", "/u1.conf"]
    assert nix_conf_sources({"NIX_USER_CONF_FILES": ""}) == ["/etc/nix/nix.conf"]


def test_load_nix_conf_order_and_nix_config() -> None:
    files = {
        "/etc/nix/nix.conf": "system = global\nmax-jobs = 2\nbuilders = @/etc/nix/machines",
        "/u1.conf": "system = u1",
        "/u2.conf": "system = u2\nmax-jobs = 7",
        "/broken.conf": "",
    }
    env = {
        "NIX_USER_CONF_FILES": "/u1.conf:/u2.conf:/broken.conf:/missing.conf",
        "NIX_CONFIG": "builders = ssh://env",
    }
    c = load_nix_conf(env, read_file=reader(files, broken=frozenset({"/broken.conf"})))
    # the first user file wins over later ones; NIX_CONFIG wins over all
    assert c.values == {"system": "u1", "max-jobs": "7", "builders": "ssh://env"}
    assert c.origins["builders"] == ("NIX_CONFIG", 1)


def test_load_nix_conf_errors_propagate() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/nix/nix.conf:1: illegal"):
        load_nix_conf({}, read_file=reader({"/etc/nix/nix.conf": "nonsense"}))


# ---------------------------------------------------------------------------------------
# Typed settings


def test_nix_settings_defaults() -> None:
    s = nix_settings(
        NixConf(),
        default_system="x86_64-linux",
        default_extra_platforms=frozenset({"i686-linux"}),
        default_system_features=frozenset({"kvm", "nixos-test"}),
        conf_dir="/opt/etc",
    )
    assert s.builders == "@/opt/etc/machines"
    assert s.system == "x86_64-linux"
    assert s.extra_platforms == {"i686-linux"}
    assert s.system_features == {"kvm", "nixos-test"}
    assert s.max_jobs == 1
    assert s.builders_use_substitutes is False


def test_nix_settings_from_lines() -> None:
    c = conf(
        "builders = b1 ; b2\n"
        "system = aarch64-linux\n"
        "extra-platforms = armv7l-linux\n"
        "extra-system-features = big-parallel\n"
        "max-jobs = 0\n"
        "builders-use-substitutes = yes\n"
    )
    s = nix_settings(c, default_system="x86_64-linux", default_system_features=frozenset({"kvm"}))
    assert s.builders == "b1 ; b2"
    assert s.system == "aarch64-linux"
    assert s.extra_platforms == {"armv7l-linux"}
    assert s.system_features == {"kvm", "big-parallel"}
    assert s.max_jobs == 0
    assert s.builders_use_substitutes is True


@pytest.mark.parametrize(("value", "jobs"), [("auto", 12), ("0", 0), ("+3", 3), ("007", 7)])
def test_max_jobs(value: str, jobs: int) -> None:
    s = nix_settings(conf(f"max-jobs = {value}"), default_system="x", cpu_count=12)
    assert s.max_jobs == jobs


@pytest.mark.parametrize("value", ["many", "-1", "1.5", "4294967296", ""])
def test_bad_max_jobs(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        nix_settings(conf(f"\nmax-jobs = {value}"), default_system="x")
    assert str(info.value).startswith("/etc/nix/nix.conf:2: setting 'max-jobs': should be")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("yes", True), ("1", True), ("false", False), ("no", False), ("0", False)],
)
def test_bools(value: str, expected: bool) -> None:
    s = nix_settings(conf(f"builders-use-substitutes = {value}"), default_system="x")
    assert s.builders_use_substitutes is expected


def test_bad_bool() -> None:
    with pytest.raises(ConfigError, match="'True' is not a Boolean"):
        nix_settings(conf("builders-use-substitutes = True"), default_system="x")


_CONF_TOKENS = [
    "include", "!include", "=", "builders", "system", "extra-system-features", "max-jobs",
    "a.conf", "/b.conf", "../c.conf", "#", "\n", " ", "\t", "x", "auto", "extra-", "true",
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from(_CONF_TOKENS), max_size=30).map(" ".join),
        st.text(max_size=200),
    ),
    st.dictionaries(
        st.sampled_from(["/etc/nix/a.conf", "/b.conf", "/c.conf"]),
        st.lists(st.sampled_from(_CONF_TOKENS), max_size=20).map(" ".join),
        max_size=3,
    ),
)
def test_fuzz_only_config_errors_escape(text: str, files: dict[str, str]) -> None:
    try:
        c = conf(text, files)
        nix_settings(c, default_system="x")
    except ConfigError as err:
        assert "\n" not in str(err)  # noqa: PT017 - checking every error hypothesis finds
