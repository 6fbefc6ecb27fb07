"""Setting one nix.conf setting in text: in place, idempotent, every other line byte for byte.

Line syntax facts: Nix 2.8 ``src/libutil/config.cc`` (``applyConfig``): lines end at ``\\n``,
``#`` starts a comment anywhere, words are split on `` \\t\\r\\n``, no line continuation.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ConfigError
from nixdist.model.nixconf import parse_nix_conf
from nixdist.model.nixconf_edit import check_settings, check_value, set_setting, sets

SOURCE = "/etc/nix/nix.conf"


def no_files(path: str) -> str | None:
    return {"/etc/nix/extra.conf": "cores = 3\n"}.get(path)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "build-hook = /h\n"),
        ("max-jobs = 2\n", "max-jobs = 2\nbuild-hook = /h\n"),
        ("max-jobs = 2", "max-jobs = 2\nbuild-hook = /h\n"),  # no final newline: one added
        ("max-jobs = 2\r\n", "max-jobs = 2\r\nbuild-hook = /h\r\n"),
        ("build-hook = /old\n", "build-hook = /h\n"),
        ("  build-hook\t=   /old   # keep me\n", "  build-hook = /h   # keep me\n"),
        ("build-hook = /old# tight\n", "build-hook = /h # tight\n"),
        ("build-hook = /old\r\n", "build-hook = /h\r\n"),
        ("build-hook =\n", "build-hook = /h\n"),
        # Every line setting it is changed in place (the last one wins in Nix).
        ("build-hook = /a\nx = 1\nbuild-hook = /b\n", "build-hook = /h\nx = 1\nbuild-hook = /h\n"),
        # A comment or another setting's value that mentions it is not a setting of it.
        ("# build-hook = /old\n", "# build-hook = /old\nbuild-hook = /h\n"),
        ("x = build-hook = 1\n", "x = build-hook = 1\nbuild-hook = /h\n"),
        ("build-hooks = /a\n", "build-hooks = /a\nbuild-hook = /h\n"),
        # Appended after includes, so that no included file overrides it.
        ("include /etc/nix/extra.conf\n", "include /etc/nix/extra.conf\nbuild-hook = /h\n"),
    ],
)
def test_set_build_hook(before: str, after: str) -> None:
    assert set_setting(before, "build-hook", "/h") == after
    assert set_setting(after, "build-hook", "/h") == after


def test_a_line_already_right_is_kept_byte_for_byte() -> None:
    text = "  build-hook   =\t/h   # mine\r\nbuild-hook = /old\n"
    assert (
        set_setting(text, "build-hook", "/h")
        == "  build-hook   =\t/h   # mine\r\nbuild-hook = /h\n"
    )


def test_old_alias_is_the_setting() -> None:
    assert set_setting("build-max-jobs = 2\n", "max-jobs", "4") == "build-max-jobs = 4\n"


def test_builders_value_as_given_and_compared_by_words() -> None:
    value = "ssh://a x86_64-linux  ;  ssh://b"
    text = set_setting("builders = @/etc/nix/machines\n", "builders", value)
    assert text == f"builders = {value}\n"
    assert parse_nix_conf(text, source=SOURCE, read_file=no_files).values["builders"] == (
        "ssh://a x86_64-linux ; ssh://b"
    )
    # Nix reads the same words, so a differently spaced value is already right.
    assert set_setting(text, "builders", "ssh://a x86_64-linux ; ssh://b") == text
    assert set_setting(text, "builders", "") == "builders =\n"


@pytest.mark.parametrize("value", ["/a # b", "/a\nb = c", "#"])
def test_values_nix_conf_cannot_hold(value: str) -> None:
    with pytest.raises(ConfigError, match="cannot contain"):
        set_setting("", "builders", value)


def test_check_value_strips_surrounding_blanks() -> None:
    assert check_value("builders", " \tssh://a  b \r") == "ssh://a  b"


@pytest.mark.parametrize("name", ["include", "!include", "a b", "a=b", "", "substituters"])
def test_not_a_setting_to_set(name: str) -> None:
    with pytest.raises(ValueError, match="setting"):
        set_setting("", name, "x")


def test_check_settings_accepts_what_set_setting_wrote() -> None:
    text = set_setting("include extra.conf\nbuilders = x\n", "build-hook", "/h")
    text = set_setting(text, "builders", "@/m")
    check_settings(
        text, source=SOURCE, wanted={"build-hook": "/h", "builders": "@/m"}, read_file=no_files
    )


def test_check_settings_names_an_included_file_that_overrides() -> None:
    def files(path: str) -> str | None:
        return {"/etc/nix/late.conf": "build-hook = /other\n"}.get(path)

    text = set_setting("build-hook = /old\ninclude late.conf\n", "build-hook", "/h")
    with pytest.raises(ConfigError, match=r"/etc/nix/late.conf:1, which this file includes"):
        check_settings(text, source=SOURCE, wanted={"build-hook": "/h"}, read_file=files)


def test_check_settings_reports_an_illegal_line_with_its_place() -> None:
    text = set_setting("max-jobs=2\n", "build-hook", "/h")
    with pytest.raises(ConfigError, match=r"nix.conf:1: illegal configuration line"):
        check_settings(text, source=SOURCE, wanted={"build-hook": "/h"}, read_file=no_files)


# -- properties -------------------------------------------------------------------------------

_word = st.text(alphabet="abcdef-/@:.;0123456789", min_size=1, max_size=8)
_blank = st.text(alphabet=" \t", max_size=3)
_names = st.sampled_from(["build-hook", "builders", "max-jobs", "system", "build-max-jobs"])
_setting_line = st.builds(
    lambda indent, name, eq, words, comment, end: (
        f"{indent}{name}{eq}={eq}{' '.join(words)}{comment}{end}"
    ),
    _blank,
    _names,
    st.sampled_from([" ", "\t", "  "]),
    st.lists(_word, max_size=3),
    st.sampled_from(["", " # c", "#x = y", "  #"]),
    st.sampled_from(["", "\r"]),
)
_other_line = st.sampled_from(
    ["", "# comment", "   ", "!include /missing.conf", "include /etc/nix/extra.conf", "\t# x"]
)
_lines = st.lists(st.one_of(_setting_line, _other_line), max_size=12)
_value = st.lists(_word, max_size=3).map(" ".join)


def _text(lines: list[str], final_newline: bool) -> str:
    return "\n".join(lines) + ("\n" if final_newline and lines else "")


@given(_lines, st.booleans(), st.sampled_from(["build-hook", "builders", "max-jobs"]), _value)
def test_idempotent_and_other_lines_untouched(
    lines: list[str],
    final_newline: bool,
    name: str,
    value: str,
) -> None:
    text = _text(lines, final_newline)
    once = set_setting(text, name, value)
    assert set_setting(once, name, value) == once
    before = text.split("\n")
    after = once.split("\n")
    setting = [i for i, line in enumerate(before) if sets(line, name)]
    # Lines stay where they were; only the ones setting `name` may differ; one may be added.
    if setting:
        assert len(after) == len(before)
    else:
        assert after[: len(before) - 1] == before[:-1]
        assert len(after) in {len(before) + 1, len(before) + 2}
    for i, line in enumerate(before[: len(after)]):
        if i not in setting and not (i == len(before) - 1 and not setting):
            assert after[i] == line
    # Nix reads the new value from this file.
    check_settings(once, source=SOURCE, wanted={name: value}, read_file=no_files)
    conf = parse_nix_conf(once, source=SOURCE, read_file=no_files)
    assert conf.values[name] == " ".join(value.split())
    # Every other setting reads as before.
    old = parse_nix_conf(text, source=SOURCE, read_file=no_files)
    assert {k: v for k, v in conf.values.items() if k != name} == {
        k: v for k, v in old.values.items() if k != name
    }


@given(st.text(max_size=200), _value)
def test_any_text_keeps_its_other_lines(text: str, value: str) -> None:
    once = set_setting(text, "build-hook", value)
    assert set_setting(once, "build-hook", value) == once
    kept = [line for line in text.split("\n") if not sets(line, "build-hook")]
    new = [line for line in once.split("\n") if not sets(line, "build-hook")]
    # The unchanged lines, in order; at most the last (unterminated) line gains an ending.
    assert new[: len(kept) - 1] == kept[:-1]
