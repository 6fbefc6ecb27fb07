"""Setting one ``nix.conf`` setting in a file's text, leaving every other byte as it was.

Pure text in, text out (``nixdist setup`` does the file work). Lines are what Nix 2.8's
``applyConfig`` reads (`nixdist.model.nixconf`): text up to a ``\\n``, cut at the first ``#``,
split on runs of ``" \\t\\r\\n"``; a line sets NAME when its first word is NAME (or an old alias
of it) and its second is ``=``. Nix 2.8 has no line continuation, so every setting is on one
line. ``include`` / ``!include`` lines are never settings and are left alone.

`set_setting(text, name, value)`:

- every line that sets NAME and whose value (its words, joined by single spaces) differs from
  VALUE's gets VALUE, in place: the indentation, the name as written and a trailing
  ``# comment`` (with the blanks before it) stay, ``" = "`` and VALUE replace the rest. Later
  lines of one file win in Nix, so changing them all leaves no stale value behind and adds none;
- lines setting NAME to VALUE already, and all other lines, are kept byte for byte;
- when no line sets NAME, ``NAME = VALUE`` is appended as the last line (after any ``include``,
  so that nothing this file includes overrides it), ending with the file's own line ending.

Hence ``set_setting`` is idempotent, and a text that already says VALUE is returned unchanged.
Values are checked first (`check_value`): a ``#`` would start a comment and a newline a new
line, so neither can be written; other blanks are kept as given (Nix joins the words with
single spaces when it reads them, and that is what the comparison uses).

`check_settings` parses the new text as Nix would (with the includes, through the injected
reader) and checks that each setting comes out with the wanted value from this very file — not
overridden by a file it includes after the changed line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError
from nixdist.model.includes import show_value
from nixdist.model.nixconf import ALIASES, APPENDABLE, parse_nix_conf

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.machines import ReadFile

_BLANKS: Final = re.compile(r"[ \t\r\n]+")
_LEADING: Final = re.compile(r"[ \t\r]*")
_TRAILING: Final = re.compile(r"[ \t\r]*\Z")
_NAME: Final = re.compile(r"[^ \t\r\n#=]+")


def _words(text: str) -> list[str]:
    return [w for w in _BLANKS.split(text) if w]


def value_words(value: str) -> str:
    """How Nix reads `value`: its words joined by single spaces."""
    return " ".join(_words(value))


def check_value(name: str, value: str) -> str:
    """`value` stripped of surrounding blanks; `ConfigError` if it cannot be written as one."""
    if "\n" in value:
        raise ConfigError(f"a value cannot contain a newline: {show_value(value)}", file=name)
    if "#" in value:
        raise ConfigError(
            f"a value cannot contain '#' (it starts a comment in nix.conf): {show_value(value)}",
            file=name,
        )
    return value.strip(" \t\r")


def sets(line: str, name: str) -> bool:
    """Whether `line` (no ``\\n``) sets setting `name` (or an old alias of it)."""
    words = _words(line.partition("#")[0])
    return len(words) >= 2 and words[1] == "=" and ALIASES.get(words[0], words[0]) == name  # noqa: PLR2004 - a name and "="


def _rewrite(line: str, value: str) -> str:
    code, hash_, comment = line.partition("#")
    indent = _LEADING.match(code)
    assert indent is not None  # noqa: S101 - the pattern matches the empty string
    written_name = _words(code)[0]
    new = f"{indent.group()}{written_name} =" + (f" {value}" if value else "")
    trailing = _TRAILING.search(code)
    assert trailing is not None  # noqa: S101 - the pattern matches the empty string
    blanks = trailing.group()
    if hash_:
        return f"{new}{blanks or ' '}#{comment}"
    return new + blanks


def set_setting(text: str, name: str, value: str) -> str:
    """`text` with setting `name` set to `value` (see the module docstring for how)."""
    if _NAME.fullmatch(name) is None or name in {"include", "!include"}:
        raise ValueError(f"not a setting name: {name!r}")
    if name in APPENDABLE:
        raise ValueError(f"{name} is a list setting; setting it here would drop extra-{name}")
    value = check_value(name, value)
    wanted = value_words(value)
    lines = text.split("\n")
    found = False
    for i, line in enumerate(lines):
        if not sets(line, name):
            continue
        found = True
        if value_words(line.partition("#")[0].split("=", 1)[1]) != wanted:
            lines[i] = _rewrite(line, value)
    if found:
        return "\n".join(lines)
    new_line = f"{name} =" + (f" {value}" if value else "")
    ending = "\r\n" if text.endswith("\r\n") else "\n"
    if text and not text.endswith("\n"):
        text += ending
    return f"{text}{new_line}{ending}"


def check_settings(
    text: str, *, source: str, wanted: Mapping[str, str], read_file: ReadFile
) -> None:
    """Check that `text`, read as Nix reads file `source`, sets each of `wanted` there.

    Raises `ConfigError` when the text does not parse (naming the file and line) or when a
    setting ends up with another value or comes from another file (an included one).
    """
    conf = parse_nix_conf(text, source=source, read_file=read_file)
    for name, value in wanted.items():
        got = conf.values.get(name)
        origin_file, origin_line = conf.origins.get(name, (source, None))
        if origin_file != source:
            raise ConfigError(
                f"setting '{name}' would still be {show_value(got or '')}, from "
                f"{origin_file}:{origin_line}, which this file includes later; change it there",
                file=source,
            )
        if got != value_words(value):
            raise ConfigError(  # a bug in set_setting, but say what it is
                f"setting '{name}' reads as {show_value(got or '')}, not {show_value(value)}",
                file=source,
                line=origin_line,
            )
