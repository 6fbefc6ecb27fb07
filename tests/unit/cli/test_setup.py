"""`nixdist setup` on files in a temporary directory, through click's runner and `main()`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner, Result

from nixdist.cli import cli, main
from nixdist.cli.setup import BACKUP_SUFFIX, RESTART_HINT
from nixdist.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "nixdist-hook"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def setup(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["setup", *args], env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def backup_of(conf: Path) -> Path:
    return conf.with_name(conf.name + BACKUP_SUFFIX)


def test_a_missing_file_is_created_with_its_directory(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "etc" / "nix" / "nix.conf"
    out = ok(setup("--nix-conf", str(conf), "--hook", str(hook)))
    assert conf.read_text() == f"build-hook = {hook}\n"
    assert conf.stat().st_mode & 0o777 == 0o644
    assert not backup_of(conf).exists()  # nothing to back up
    assert out == (
        f"--- /dev/null\n+++ {conf}\n@@ -0,0 +1 @@\n+build-hook = {hook}\n"
        f"wrote {conf}\n{RESTART_HINT}\n"
    )


def test_an_existing_line_is_replaced_in_place_with_a_backup(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    old = "# my settings\nbuild-hook = /old/hook  # was here\nmax-jobs = 4\n"
    conf.write_text(old)
    conf.chmod(0o600)
    out = ok(setup("--nix-conf", str(conf), "--hook", str(hook)))
    new = f"# my settings\nbuild-hook = {hook}  # was here\nmax-jobs = 4\n"
    assert conf.read_text() == new
    assert conf.stat().st_mode & 0o777 == 0o600  # the mode is kept
    assert backup_of(conf).read_text() == old
    assert backup_of(conf).stat().st_mode & 0o777 == 0o600
    assert out == (
        f"--- {conf}\n+++ {conf}\n@@ -1,3 +1,3 @@\n # my settings\n"
        f"-build-hook = /old/hook  # was here\n+build-hook = {hook}  # was here\n max-jobs = 4\n"
        f"wrote {conf} (previous version: {backup_of(conf)})\n{RESTART_HINT}\n"
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_second_run_changes_nothing_and_says_so(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("max-jobs = 4\n")
    ok(setup("--nix-conf", str(conf), "--hook", str(hook), "--builders", "ssh://a"))
    backup_of(conf).write_text("the first backup\n")
    before = conf.stat()
    out = ok(setup("--nix-conf", str(conf), "--hook", str(hook), "--builders", "ssh://a"))
    assert out == f"{conf} already has build-hook = {hook}, builders = ssh://a: nothing changed\n"
    after = conf.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert backup_of(conf).read_text() == "the first backup\n"


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("max-jobs = 4")  # no final newline
    out = ok(setup("--nix-conf", str(conf), "--hook", str(hook), "--dry-run"))
    assert conf.read_text() == "max-jobs = 4"
    assert not backup_of(conf).exists()
    assert out == (
        f"--- {conf}\n+++ {conf}\n@@ -1 +1,2 @@\n"
        "-max-jobs = 4\n\\ No newline at end of file\n+max-jobs = 4\n"
        f"+build-hook = {hook}\ndry run: {conf} not changed\n"
    )
    missing = tmp_path / "new" / "nix.conf"
    ok(setup("--nix-conf", str(missing), "--hook", str(hook), "--dry-run"))
    assert not missing.parent.exists()


def test_machines_writes_an_absolute_include(
    tmp_path: Path, hook: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "nix.conf"
    conf.write_text("builders = @/etc/nix/machines\nbuild-hook = /x\n")
    (tmp_path / "machines").write_text("ssh://builder x86_64-linux - 2\n")
    monkeypatch.chdir(tmp_path)
    ok(setup("--nix-conf", "nix.conf", "--hook", str(hook), "--machines", "machines"))
    assert conf.read_text() == f"builders = @{tmp_path}/machines\nbuild-hook = {hook}\n"


def test_builders_is_written_as_given(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    value = "ssh://a x86_64-linux ; ssh://b aarch64-linux"
    ok(setup("--nix-conf", str(conf), "--hook", str(hook), "--builders", value))
    assert conf.read_text() == f"build-hook = {hook}\nbuilders = {value}\n"
    ok(setup("--nix-conf", str(conf), "--hook", str(hook), "--builders", ""))
    assert conf.read_text() == f"build-hook = {hook}\nbuilders =\n"


def test_builders_and_machines_together_are_refused(tmp_path: Path) -> None:
    result = setup("--nix-conf", str(tmp_path / "c"), "--builders", "x", "--machines", "y")
    assert result.exit_code == 2
    assert "--builders or --machines, not both" in result.output


def error_of(result: Result) -> str:
    assert isinstance(result.exception, ConfigError), (result.output, result.exception)
    return str(result.exception)


def test_values_nix_conf_cannot_hold(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    result = setup("--nix-conf", str(conf), "--hook", str(hook), "--builders", "ssh://a # b")
    assert "cannot contain '#'" in error_of(result)
    spaced = tmp_path / "my machines"
    spaced.write_text("")
    result = setup("--nix-conf", str(conf), "--hook", str(hook), "--machines", str(spaced))
    assert "which nix.conf cannot hold" in error_of(result)
    assert not conf.exists()


def test_a_missing_machines_file_or_hook_is_refused(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    result = setup("--nix-conf", str(conf), "--hook", str(hook), "--machines", "/no/machines")
    assert error_of(result) == "/no/machines: no such machines file"
    hook.chmod(0o644)
    assert error_of(setup("--nix-conf", str(conf), "--hook", str(hook))) == (
        f"{hook}: not an executable file"
    )
    assert not conf.exists()


def test_the_default_hook_is_the_one_next_to_python(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc-nix"
    ok(setup(env={"NIX_CONF_DIR": str(conf_dir)}))
    installed = Path(os.path.abspath(sys.executable)).with_name("nixdist-hook")  # noqa: PTH100
    assert (conf_dir / "nix.conf").read_text() == f"build-hook = {installed}\n"


def test_a_symlink_is_followed_and_kept(tmp_path: Path, hook: Path) -> None:
    real = tmp_path / "real.conf"
    real.write_text("max-jobs = 1\n")
    link = tmp_path / "nix.conf"
    link.symlink_to(real)
    ok(setup("--nix-conf", str(link), "--hook", str(hook)))
    assert link.is_symlink()
    assert real.read_text() == f"max-jobs = 1\nbuild-hook = {hook}\n"
    assert backup_of(real).read_text() == "max-jobs = 1\n"


def test_a_symlink_into_the_nix_store_is_refused(tmp_path: Path, hook: Path) -> None:
    link = tmp_path / "nix.conf"
    link.symlink_to("/nix/store/00000000000000000000000000000000-nix.conf")
    assert "generated by NixOS or home-manager" in error_of(
        setup("--nix-conf", str(link), "--hook", str(hook))
    )


def test_an_included_file_that_overrides_is_named_and_nothing_written(
    tmp_path: Path, hook: Path
) -> None:
    conf = tmp_path / "nix.conf"
    old = "build-hook = /old\ninclude late.conf\n"
    conf.write_text(old)
    (tmp_path / "late.conf").write_text("\nbuild-hook = /elsewhere\n")
    message = error_of(setup("--nix-conf", str(conf), "--hook", str(hook)))
    assert f"from {tmp_path}/late.conf:2, which this file includes later" in message
    assert conf.read_text() == old
    assert not backup_of(conf).exists()


def test_other_bytes_are_kept_even_when_not_utf8(tmp_path: Path, hook: Path) -> None:
    conf = tmp_path / "nix.conf"
    old = b"# caf\xe9\r\nbuild-hook = /old\nsystem-features = kvm\xff\n"
    conf.write_bytes(old)
    result = setup("--nix-conf", str(conf), "--hook", str(hook))
    ok(result)
    assert conf.read_bytes() == old.replace(b"/old", str(hook).encode())
    assert b"-build-hook = /old\n" in result.stdout_bytes


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.parent.write_text("a file, not a directory"), "Not a directory"),
    ],
)
def test_errors_are_one_line_naming_the_file(
    tmp_path: Path,
    hook: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    words: str,
) -> None:
    conf = tmp_path / "d" / "nix.conf"
    conf.parent.mkdir()
    if words == "Not a directory":
        conf.parent.rmdir()
    make(conf)
    assert main(["setup", "--nix-conf", str(conf), "--hook", str(hook)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nixdist: error: {conf}: ")
    assert words in err
    assert err.count("\n") == 1


def test_help_says_to_restart_the_daemon() -> None:
    out = ok(setup("--help"))
    assert "restart the nix-daemon" in out
    assert "nix.conf.nixdist-backup" in out


def test_a_user_file_that_overrides_is_warned_about(tmp_path: Path, hook: Path) -> None:
    user = tmp_path / "user.conf"
    user.write_text("build-hook = /theirs\n")
    env = {"NIX_CONF_DIR": str(tmp_path), "NIX_USER_CONF_FILES": str(user)}
    result = setup("--hook", str(hook), env=env)
    ok(result)
    assert (tmp_path / "nix.conf").read_text() == f"build-hook = {hook}\n"
    assert f"build-hook is overridden by {user}:1" in result.stderr
