"""``nix.conf``: the settings Nix reads from its configuration files, and which files those are.

Spec: Nix 2.8 ``src/libutil/config.cc`` (``applyConfig``) and ``src/libstore/globals.cc``
(``loadConfFile``, ``getUserConfigFiles``). Pure: files are read through an injected
``read_file(path) -> str | None`` (None: the file does not exist), as in `nixdist.model.machines`.

Syntax, line by line (lines end at ``\\n``)::

    line := cut at the first "#", then split on runs of " \\t\\r\\n" into words
            (no words)                        -- skipped
          | "include" PATH                     -- read PATH; missing: error
          | "!include" PATH                    -- read PATH; missing: ignored
          | NAME "=" VALUE-WORD*               -- value: the words joined by single spaces

``=`` must be its own word (``a=b`` is an error, as in Nix). A relative include path is taken
relative to the directory of the including file. Any other line is an error ("illegal
configuration line"). Nix also ignores an included file that exists but cannot be read; so do
we. Nix has no include-cycle guard; we stop at a cycle or `MAX_INCLUDE_DEPTH` nested includes.

Names: old aliases (``build-max-jobs``, ...) are stored under their current name. ``extra-NAME``
*appends* to NAME when NAME is a list setting (`APPENDABLE`) — to its value from an earlier
line, or to Nix's built-in default when no line sets it; setting NAME again later drops what
was appended before. For any other NAME, Nix treats ``extra-NAME`` as an unknown setting of
that literal name; so do we. (``extra-platforms`` is a setting's own name, not an append.)

Which files (2.8, `nix_conf_sources`), later ones overriding earlier ones:

1. ``$NIX_CONF_DIR/nix.conf`` (default ``/etc/nix/nix.conf``);
2. the user files, the last listed first: ``$NIX_USER_CONF_FILES`` (colon-separated) if set,
   else ``$XDG_CONFIG_HOME/nix/nix.conf`` (default ``~/.config/nix/nix.conf``) followed by
   ``<dir>/nix/nix.conf`` for each dir of ``$XDG_CONFIG_DIRS`` (default ``/etc/xdg``);
3. the text of ``$NIX_CONFIG``.

A top-level file that is missing or unreadable is skipped, as Nix does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.model.includes import check_include, show_value

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.machines import ReadFile

DEFAULT_CONF_DIR: Final = "/etc/nix"
NIX_CONFIG_SOURCE: Final = "NIX_CONFIG"

ALIASES: Final = {
    "build-max-jobs": "max-jobs",
    "build-cores": "cores",
    "build-max-silent-time": "max-silent-time",
    "build-timeout": "timeout",
    "build-use-substitutes": "substitute",
    "build-fallback": "fallback",
    "build-use-chroot": "sandbox",
    "build-use-sandbox": "sandbox",
    "build-chroot-dirs": "sandbox-paths",
    "build-sandbox-paths": "sandbox-paths",
    "build-repeat": "repeat",
    "build-keep-log": "keep-build-log",
    "build-compress-log": "compress-build-log",
    "build-max-log-size": "max-build-log-size",
    "build-impersonate-linux-26": "impersonate-linux-26",
}
"""Nix 2.8's old setting names and the names they stand for."""

APPENDABLE: Final = frozenset(
    {
        "access-tokens",
        "allowed-uris",
        "allowed-users",
        "experimental-features",
        "extra-platforms",
        "hashed-mirrors",
        "ignored-acls",
        "nix-path",
        "plugin-files",
        "sandbox-paths",
        "secret-key-files",
        "substituters",
        "system-features",
        "trusted-public-keys",
        "trusted-substituters",
        "trusted-users",
    }
)
"""Nix 2.8's list-valued settings: the ones ``extra-NAME`` appends to."""

_WORDS: Final = re.compile(r"[ \t\r\n]+")
_INCLUDES: Final = frozenset({"include", "!include"})
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})
_UNSIGNED: Final = re.compile(r"\+?[0-9]+")
_MAX_UINT: Final = 2**32 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class NixConf:
    """Settings as written in the files: raw text values, by current name.

    `values` holds what a ``NAME = VALUE`` line set (the last one wins). `appended` holds the
    words ``extra-NAME`` lines added after that (or to the default, when NAME is not in
    `values`). `origins` names the ``file:line`` of the last line that touched each name.
    """

    values: Mapping[str, str] = field(default_factory=dict)
    appended: Mapping[str, str] = field(default_factory=dict)
    origins: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def get(self, name: str, default: str) -> str:
        """The effective value of `name`: its own value (else `default`) plus appended words."""
        value = self.values.get(name, default)
        extra = self.appended.get(name)
        if extra is None:
            return value
        return f"{value} {extra}" if value else extra


def parse_nix_conf(
    text: str,
    *,
    source: str,
    read_file: ReadFile,
    base: NixConf | None = None,
) -> NixConf:
    """Apply the lines of one ``nix.conf`` text on top of `base`; returns the new settings.

    Raises `ConfigError` (naming file and line) for an illegal line, a missing ``include``, an
    include cycle; nothing else.
    """
    base = base or NixConf()
    state = _Apply(dict(base.values), dict(base.appended), dict(base.origins), read_file)
    state.apply(text, source, (source,))
    return NixConf(values=state.values, appended=state.appended, origins=state.origins)


class _Apply:
    def __init__(
        self,
        values: dict[str, str],
        appended: dict[str, str],
        origins: dict[str, tuple[str, int]],
        read_file: ReadFile,
    ) -> None:
        self.values = values
        self.appended = appended
        self.origins = origins
        self.read_file = read_file

    def apply(self, text: str, source: str, stack: tuple[str, ...]) -> None:
        for lineno, line in enumerate(text.split("\n"), start=1):
            words = [w for w in _WORDS.split(line.partition("#")[0]) if w]
            if not words:
                continue
            if words[0] in _INCLUDES:
                if len(words) != 2:  # noqa: PLR2004 - the keyword and one path
                    raise _illegal(line, source, lineno)
                self.include(words[1], source, lineno, stack, missing_ok=words[0] == "!include")
            elif len(words) >= 2 and words[1] == "=":  # noqa: PLR2004 - a name and "="
                self.set(words[0], " ".join(words[2:]), (source, lineno))
            else:
                raise _illegal(line, source, lineno)

    def include(
        self, path: str, source: str, lineno: int, stack: tuple[str, ...], *, missing_ok: bool
    ) -> None:
        if not path.startswith("/"):
            path = posixpath.join(posixpath.dirname(source), path)
        path = posixpath.normpath(path)
        check_include(path, stack, source=source, line=lineno)
        try:
            text = self.read_file(path)
        except ConfigError:
            return  # Nix skips a file it cannot read (applyConfigFile catches SysError)
        if text is None:
            if missing_ok:
                return
            raise ConfigError(
                f"included file {show_value(path)} not found", file=source, line=lineno
            )
        self.apply(text, path, (*stack, path))

    def set(self, name: str, value: str, origin: tuple[str, int]) -> None:
        name = ALIASES.get(name, name)
        if name not in APPENDABLE and name.startswith("extra-"):
            target = ALIASES.get(name[6:], name[6:])
            if target in APPENDABLE:
                if value:
                    old = self.appended.get(target)
                    self.appended[target] = f"{old} {value}" if old else value
                self.origins[target] = origin
                return
        self.values[name] = value
        self.appended.pop(name, None)
        self.origins[name] = origin


def _illegal(line: str, source: str, lineno: int) -> ConfigError:
    return ConfigError(
        f"illegal configuration line {show_value(line.strip())}", file=source, line=lineno
    )


# ---------------------------------------------------------------------------------------
# Which files


def nix_conf_sources(env: Mapping[str, str]) -> list[str]:
    """The configuration files Nix 2.8 reads, in the order they are applied (later wins)."""
    conf_dir = posixpath.normpath(env.get("NIX_CONF_DIR") or DEFAULT_CONF_DIR)
    sources = [f"{conf_dir}/nix.conf"]
    user_files = env.get("NIX_USER_CONF_FILES")
    if user_files is not None:
        users = [p for p in user_files.split(":") if p]
    else:
        config_home = env.get("XDG_CONFIG_HOME")
        if config_home is None and env.get("HOME"):
            config_home = f"{env['HOME']}/.config"
        dirs = [] if config_home is None else [config_home]
        dirs += [d for d in env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
        users = [f"{d}/nix/nix.conf" for d in dirs]
    sources += reversed(users)
    return sources


def load_nix_conf(env: Mapping[str, str], *, read_file: ReadFile) -> NixConf:
    """All of Nix's configuration files (see `nix_conf_sources`) and ``$NIX_CONFIG``."""
    conf = NixConf()
    for path in nix_conf_sources(env):
        try:
            text = read_file(path)
        except ConfigError:
            continue  # as Nix: an unreadable configuration file is skipped
        if text is not None:
            conf = parse_nix_conf(text, source=path, read_file=read_file, base=conf)
    nix_config = env.get("NIX_CONFIG")
    if nix_config is not None:
        conf = parse_nix_conf(nix_config, source=NIX_CONFIG_SOURCE, read_file=read_file, base=conf)
    return conf


# ---------------------------------------------------------------------------------------
# Typed settings


@dataclass(frozen=True, slots=True, kw_only=True)
class NixSettings:
    """The settings that decide remote builds, typed, with Nix's defaults filled in."""

    builders: str
    system: str
    extra_platforms: frozenset[str]
    system_features: frozenset[str]
    max_jobs: int
    builders_use_substitutes: bool


def nix_settings(
    conf: NixConf,
    *,
    default_system: str,
    default_extra_platforms: frozenset[str] = frozenset(),
    default_system_features: frozenset[str] = frozenset(),
    conf_dir: str = DEFAULT_CONF_DIR,
    cpu_count: int = 1,
) -> NixSettings:
    """Type the settings. The defaults Nix computes from the host come from the caller.

    `conf_dir` gives the default ``builders`` (``@<conf_dir>/machines``); `cpu_count` is what
    ``max-jobs = auto`` means. A malformed value raises `ConfigError` naming where it was set.
    """
    platforms = conf.get("extra-platforms", " ".join(sorted(default_extra_platforms)))
    features = conf.get("system-features", " ".join(sorted(default_system_features)))
    return NixSettings(
        builders=conf.get("builders", f"@{conf_dir}/machines"),
        system=conf.get("system", default_system),
        extra_platforms=frozenset(_WORDS.split(platforms)) - {""},
        system_features=frozenset(_WORDS.split(features)) - {""},
        max_jobs=_max_jobs(conf, cpu_count),
        builders_use_substitutes=_bool(conf, "builders-use-substitutes", default=False),
    )


def _error(conf: NixConf, name: str, message: str) -> ConfigError:
    file, line = conf.origins.get(name, ("<nix.conf>", None))
    return ConfigError(f"setting '{name}': {message}", file=file, line=line)


def _max_jobs(conf: NixConf, cpu_count: int) -> int:
    value = conf.get("max-jobs", "1")
    if value == "auto":
        return max(1, cpu_count)
    if _UNSIGNED.fullmatch(value) is None or int(value) > _MAX_UINT:
        raise _error(conf, "max-jobs", f"should be 'auto' or an integer, not {show_value(value)}")
    return int(value)


def _bool(conf: NixConf, name: str, *, default: bool) -> bool:
    value = conf.values.get(name)
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _error(conf, name, f"{show_value(value)} is not a Boolean (true/false, yes/no, 1/0)")
