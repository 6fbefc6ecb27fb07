"""`nixdist check`'s script (version, config, the load probe's sections, delete) as a real sh
runs it, and the parsers of what Nix prints there."""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import ParseError
from nixdist.transport.check_script import (
    RemoteSettings,
    parse_nix_version,
    parse_show_config,
    remote_programs,
    render_check_script,
)
from nixdist.transport.probe import parse_df, read_report
from nixdist.transport.remote_script import Section, parse_output

if TYPE_CHECKING:
    from pathlib import Path


def _fake_program(path: Path, script: str) -> None:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_check_script_runs_under_sh(tmp_path: Path) -> None:
    """The script, run by a real sh with fake nix-store and nix: sections, statuses, stderr,
    and the load probe's sections (df among them) as the hook sees this machine."""
    _fake_program(tmp_path / "nix-store", 'echo "nix-store (Nix) 2.8.0"; [ "$1" = --version ]')
    _fake_program(tmp_path / "nix", "echo 'nix: unknown flag' >&2; exit 1")
    script = render_check_script(
        nix_store=str(tmp_path / "nix-store"),
        nix=str(tmp_path / "nix"),
        delete="/nix/store/x-it's",
    )
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    out = parse_output("hello from .bashrc\n" + done.stdout)
    assert out.noise == "hello from .bashrc\n"
    assert out.sections["version"] == Section(status=0, text="nix-store (Nix) 2.8.0\n")
    assert out.sections["config"] == Section(status=1, text="nix: unknown flag\n")
    assert out.sections["df"].status == 0
    assert parse_df(out.sections["df"].text).size_bytes > 0
    assert out.sections["delete"] == Section(status=1, text="nix-store (Nix) 2.8.0\n")
    assert [out.sections[name].status for name in ("os", "loadavg", "cores", "mem")] == [0] * 4
    report = read_report(out)
    assert (report.os, report.problem) == ("Linux", None)


def test_remote_programs() -> None:
    assert remote_programs("nix-store") == ("nix-store", "nix")
    assert remote_programs("/opt/nix/bin/nix-store") == (
        "/opt/nix/bin/nix-store",
        "/opt/nix/bin/nix",
    )


def test_parse_nix_version() -> None:
    assert parse_nix_version("nix-store (Nix) 2.8.0\n") == "2.8.0"
    assert parse_nix_version("welcome\nnix-store (Nix) 2.18.1pre\n") == "2.18.1pre"
    with pytest.raises(ParseError):
        parse_nix_version("bash: nix-store: command not found")


def _setting(value: object) -> dict[str, object]:
    return {"aliases": [], "defaultValue": value, "description": "…", "value": value}


def test_parse_show_config_nix_2_8() -> None:
    data = {
        "system": _setting("x86_64-linux"),
        "extra-platforms": _setting(["aarch64-linux", "i686-linux"]),
        "system-features": _setting(["big-parallel", "kvm"]),
        "trusted-users": _setting(["root"]),
    }
    text = "warning: show-config is deprecated\n" + json.dumps(data)
    assert parse_show_config(text) == RemoteSettings(
        system="x86_64-linux",
        extra_platforms=frozenset({"aarch64-linux", "i686-linux"}),
        system_features=frozenset({"big-parallel", "kvm"}),
        trusted_users=("root",),
    )


def test_parse_show_config_flat_and_string_lists() -> None:
    text = json.dumps({"system": "aarch64-linux", "system-features": "kvm  benchmark"})
    settings = parse_show_config(text)
    assert settings.system == "aarch64-linux"
    assert settings.extra_platforms == frozenset()
    assert settings.system_features == frozenset({"kvm", "benchmark"})
    assert settings.platforms == frozenset({"aarch64-linux"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no JSON object"),
        ("error: unrecognised flag '--json'", "no JSON object"),
        ("{not json", "bad JSON"),
        ('{"system": {"value": ""}}', "no 'system'"),
        ('{"max-jobs": {"value": 1}}', "no 'system'"),
    ],
)
def test_parse_show_config_refuses(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_show_config(text)
