"""Scripts of framed sections: the format, what a real ``sh`` makes of it, and the bounded
runner (over a local target: the same code as over ssh, without ssh)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixdist.errors import TransportError
from nixdist.transport.openssh import ControlMasters, SshTarget
from nixdist.transport.remote_script import (
    MARKER,
    ScriptOutput,
    Section,
    frame,
    parse_output,
    render_script,
    run_script,
)

if TYPE_CHECKING:
    from pathlib import Path

LOCAL = SshTarget(host="localhost")


def _marked(name: str, body: str, status: int = 0) -> str:
    """What `frame` prints for a command that prints `body` and exits `status`."""
    return f"\n{MARKER} begin {name}\n{body}\n{MARKER} end {name} {status}\n"


# ---------------------------------------------------------------------------------------
# The format


def test_parse_output() -> None:
    text = (
        "welcome to b2\n"
        + _marked("version", "nix-store (Nix) 2.8.0\n")
        + _marked("config", "error: no nix", 127)
        + f"\n{MARKER} begin df\nFilesystem"  # cut short
    )
    out = parse_output(text)
    assert out.noise == "welcome to b2\n"
    assert out.sections == {
        "version": Section(status=0, text="nix-store (Nix) 2.8.0\n"),
        "config": Section(status=127, text="error: no nix"),
    }
    assert out.unfinished == "df"
    assert out.error == ""


def test_parse_output_quiet_and_empty() -> None:
    assert parse_output(_marked("df", "")).noise == ""
    assert parse_output(_marked("df", "")).sections == {"df": Section(status=0, text="")}
    assert parse_output("") == ScriptOutput()
    # An end marker without its begin, or for another section, is ignored.
    out = parse_output(f"{MARKER} end x 0\n" + _marked("a", "1"))
    assert out.sections == {"a": Section(status=0, text="1")}
    assert parse_output(f"{MARKER} begin a\n{MARKER} end b 0\n").sections == {}


def test_a_section_interrupted_by_another_is_dropped() -> None:
    out = parse_output(f"\n{MARKER} begin a\npartial" + _marked("b", "whole"))
    assert out.sections == {"b": Section(status=0, text="whole")}
    assert out.unfinished is None


@pytest.mark.parametrize("name", ["", "A", "1a", "a b", "a'b", "a%s", "a\\n"])
def test_frame_takes_only_plain_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a section name"):
        frame(name, "true")


_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))


@given(noise=_TEXT, body=_TEXT, status=st.integers(min_value=0, max_value=255))
def test_parse_output_round_trip(noise: str, body: str, status: int) -> None:
    if MARKER in noise or MARKER in body:
        return
    out = parse_output(noise + _marked("version", body, status))
    assert out.noise == noise
    assert out.sections == {"version": Section(status=status, text=body)}


_SECTIONS = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
    st.tuples(_TEXT, st.integers(min_value=0, max_value=255)),
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=_TEXT, sections=_SECTIONS)
def test_what_sh_prints_parses_back(noise: str, sections: dict[str, tuple[str, int]]) -> None:
    """Rendered, run by a real sh after a shell's noise, and parsed: each section's output
    (exactly, final newline or not) and exit status come back."""
    if any(MARKER in text for text in (noise, *(t for t, _ in sections.values()))):
        return
    script = f"printf '%s' {shlex.quote(noise)}\n" + render_script(
        (name, f"printf '%s' {shlex.quote(text)}; (exit {status})")
        for name, (text, status) in sections.items()
    )
    done = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    out = parse_output(done.stdout.decode())
    assert out.noise == noise
    assert out.sections == {
        name: Section(status=status, text=text) for name, (text, status) in sections.items()
    }


def test_stderr_is_part_of_a_section() -> None:
    script = render_script([("a", "echo out; echo err >&2; (exit 3)")])
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert parse_output(done.stdout).sections == {"a": Section(status=3, text="out\nerr\n")}


# ---------------------------------------------------------------------------------------
# The runner


def _run(tmp_path: Path, script: str, *, timeout: float = 10, limit: int = 1024) -> ScriptOutput:
    masters = ControlMasters(tmp_path)
    return run_script(
        LOCAL, masters, dict(os.environ), script, what="the test", timeout=timeout, limit=limit
    )


def test_run_script(tmp_path: Path) -> None:
    out = _run(tmp_path, "echo 'a banner'\n" + render_script([("a", "echo 1"), ("b", "false")]))
    assert out == ScriptOutput(
        noise="a banner\n",
        sections={"a": Section(status=0, text="1\n"), "b": Section(status=1, text="")},
    )


def test_output_over_the_limit_is_cut(tmp_path: Path) -> None:
    script = render_script([("small", "echo 1"), ("big", "yes | head -c 100000")])
    out = _run(tmp_path, script, limit=1024)
    assert out.sections == {"small": Section(status=0, text="1\n")}
    assert out.unfinished == "big"
    assert out.error == "the test printed more than 1024 bytes; the rest was not read"


def test_stderr_over_the_limit_is_cut_too(tmp_path: Path) -> None:
    out = _run(tmp_path, "yes >&2", limit=1024)
    assert out.error == "the test printed more than 1024 bytes; the rest was not read"


def test_a_timeout_says_what_it_waited_for(tmp_path: Path) -> None:
    script = render_script([("quick", "echo 1"), ("slow", "sleep 30")])
    started = time.monotonic()
    out = _run(tmp_path, script, timeout=0.5)
    assert time.monotonic() - started < 10
    assert out.sections == {"quick": Section(status=0, text="1\n")}
    assert out.error == "the test did not finish within 0.5 seconds (still in its slow section)"
    between = _run(tmp_path, render_script([("quick", "echo 1")]) + "sleep 30", timeout=0.5)
    assert between.error.endswith("(after its quick section)")
    before = _run(tmp_path, "sleep 30", timeout=0.5)
    assert before.error.endswith("(no section had begun)")


def test_a_script_that_keeps_running_after_its_output_ends_is_stopped(tmp_path: Path) -> None:
    out = _run(tmp_path, render_script([("a", "echo 1")]) + "exec >&- 2>&-; sleep 30", timeout=1)
    assert out.sections == {"a": Section(status=0, text="1\n")}
    assert out.error.startswith("the test did not finish within 1 seconds")


def test_a_failing_script_says_why(tmp_path: Path) -> None:
    out = _run(tmp_path, render_script([("a", "echo 1")]) + "echo 'sh: oops' >&2; exit 3")
    assert out.sections == {"a": Section(status=0, text="1\n")}
    assert out.error == "the test failed: sh: oops"
    assert _run(tmp_path, "exit 4").error == "the test failed: exit status 4"


def test_only_an_unreachable_builder_raises(tmp_path: Path) -> None:
    said = "ssh: connect to host b1 port 22: Connection refused"
    with pytest.raises(TransportError) as raised:
        _run(tmp_path, f"echo 'a banner'; echo '{said}' >&2; exit 255")
    assert str(raised.value) == f"cannot reach 'localhost': {said}"
