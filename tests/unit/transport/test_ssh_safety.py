"""Nothing from a machines file can inject ssh options or shell commands.

ssh is run from an argument list (no local shell); the host is one argument; the remote
command is a constant (or quoted words) after ``--``; a host that ssh would read as an option is
refused. The last test runs the real ssh client with hostile host names and checks that
nothing ran.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import ConfigError
from nixdist.model.machines import parse_machines
from nixdist.transport.fs import private_dir
from nixdist.transport.openssh import ControlMasters, target_for_machine

if TYPE_CHECKING:
    from pathlib import Path

    from nixdist.model.machines import Machine

# (";" separates machines in a machines file and "/" starts a URI's path, so neither can be
# part of a host; whitespace separates fields.)
HOSTILE_HOSTS = [
    "b1$(touch${IFS}pwned)",
    "b1`touch${IFS}pwned`",
    "b1&&touch${IFS}pwned",
    "b1'\"quoted",
    "user@b1|touch${IFS}pwned",
]


def machine(uri: str, *rest: str) -> Machine:
    line = " ".join([uri, "x86_64-linux", *rest])
    [found] = parse_machines(
        line, source="/etc/nix/machines", read_file=lambda _: None, default_system="x86_64-linux"
    )
    return found


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_hostile_host_is_one_argument_and_never_a_shell_word(host: str, tmp_path: Path) -> None:
    target = target_for_machine(machine(f"ssh://{host}"), {"NIX_SSHOPTS": "-p 2222"})
    argv = ControlMasters(tmp_path).serve_argv(target, use_master=False)
    assert argv[:2] == ["ssh", host]
    assert argv.count(host) == 1
    separator = argv.index("--")
    assert argv[separator + 1 :] == ["nix-store --serve --write"]
    assert all(not word.startswith(host) for word in argv[2:])


@pytest.mark.parametrize(
    "uri",
    ["ssh://-oProxyCommand=touch", "ssh://user@-oProxyCommand=x", "ssh://-F/etc/passwd"],
)
def test_a_host_ssh_would_read_as_an_option_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError, match="starts with '-'"):
        target_for_machine(machine(uri), {})


def test_uri_parameters_reach_the_remote_shell_quoted(tmp_path: Path) -> None:
    # remote-program is a list of words (Nix 2.34 reads it as a list setting), each quoted.
    program = ["nix-store;touch", "/tmp/pwned"]
    store = "$(touch /tmp/pwned)"
    uri = "ssh://b1?remote-program=nix-store%3Btouch%20/tmp/pwned&remote-store=%24(touch%20/tmp/pwned)"
    target = target_for_machine(machine(uri), {})
    command = ControlMasters(tmp_path).serve_argv(target, use_master=False)[-1]
    assert shlex.split(command) == [*program, "--serve", "--write", "--store", store]


def test_an_ssh_ng_machine_runs_the_daemon_on_stdio(tmp_path: Path) -> None:
    uri = "ssh-ng://b1?remote-program=nix-daemon%20--force-untrusted&remote-store=/s%20x"
    target = target_for_machine(machine(uri), {})
    command = ControlMasters(tmp_path).serve_argv(target, use_master=False)[-1]
    assert shlex.split(command) == ["nix-daemon", "--force-untrusted", "--stdio", "--store", "/s x"]
    # A plus is a plus: Nix percent-decodes store URI parameters, it does not decode a form.
    plus = target_for_machine(machine("ssh-ng://b1?remote-program=/opt/nix+2/nix-daemon"), {})
    assert plus.remote_program == "/opt/nix+2/nix-daemon"
    plain = target_for_machine(machine("ssh-ng://b1"), {})
    assert ControlMasters(tmp_path).serve_argv(plain, use_master=False)[-1] == "nix-daemon --stdio"


def test_feature_names_and_keys_never_reach_the_command_line(tmp_path: Path) -> None:
    m = machine("ssh://b1", "-oIdentityFile=/x", "1", "1", "$(id),a|b", "-")
    argv = ControlMasters(tmp_path).serve_argv(target_for_machine(m, {}), use_master=False)
    assert "$(id)" not in " ".join(argv)
    assert argv[argv.index("-i") + 1] == "-oIdentityFile=/x"  # the value of -i, not an option


def test_a_pinned_host_key_must_be_a_single_key(tmp_path: Path) -> None:
    two = base64.b64encode(b"ssh-ed25519 AAAA\n* ssh-ed25519 BBBB").decode()
    m = machine("ssh://b1", "-", "1", "1", "-", "-", two)
    with pytest.raises(ConfigError, match="more than one line"):
        ControlMasters(tmp_path).serve_argv(target_for_machine(m, {}), use_master=False)


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_the_real_ssh_client_runs_nothing_for_hostile_hosts(host: str, tmp_path: Path) -> None:
    target = target_for_machine(machine(f"ssh://{host}"), {})
    argv = ControlMasters(tmp_path / "state", connect_timeout_s=2).serve_argv(
        target, use_master=False
    )
    done = subprocess.run(
        [*argv[:1], "-F", "/dev/null", *argv[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        cwd=tmp_path,  # where a shell would have created "pwned"
        timeout=60,  # a hang guard only
    )
    assert done.returncode != 0
    assert not (tmp_path / "pwned").exists()


def test_private_dirs_are_narrowed_to_their_owner(tmp_path: Path) -> None:
    wide = tmp_path / "state"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    assert private_dir(wide).stat().st_mode & 0o777 == 0o700
    fresh = private_dir(tmp_path / "a" / "b")
    assert fresh.stat().st_mode & 0o777 == 0o700
