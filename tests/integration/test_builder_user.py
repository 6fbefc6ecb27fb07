"""Builders reached as an ordinary user, as users run them: ``ssh://nix@host`` (issue 12, item 4).

On such a builder ``nix`` is not root: the store belongs to root and is reached through the
builder's nix-daemon, and ``nix`` may add unsigned paths and build input-addressed derivations
only when it is in the builder's ``trusted-users``. The farm makes these builders
(``user=nix``, ``trusted=false``; `nixdist.farm.spec`) with the host's Nix (2.8) and with Nix
2.34 (chrooted). Here, with real nix-build through nixdist-hook:

- a trusted user's builder builds a small DAG: every output comes back valid, and was built on
  that builder (its own store says so), by its daemon's build users;
- an untrusted user's builder fails the build as Nix's own hook (build-remote) fails it, and
  ``nixdist check`` says why: the user, and the trusted-users line for the builder's nix.conf;
- the daemon is part of the builder: stopping the builder stops it;
- ``scheme=ssh-ng`` lists a builder as ``ssh-ng://``, and the host's Nix reaches it that way
  (``nix-daemon --stdio`` over ssh, as root and as the user).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.farm.rootfs import ensure_rootfs_many
from nixdist.farm.spec import make_spec
from nixrun import DAG, HANG_GUARD_S, fresh_salt, nix_build, outputs_of_graph

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nixdist.farm import Farm
    from nixdist.farm.spec import BuilderSpec

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")
BUILD_REMOTE = Path("/usr/libexec/nix/build-remote")  # the host's Nix (2.8): its own hook
USER = "nix"
# name: (Nix version or None for the host's, trusted)
BUILDERS: dict[str, tuple[str | None, bool]] = {
    "t28": (None, True),
    "u28": (None, False),
    "t234": ("2.34", True),
    "u234": ("2.34", False),
}
TRUSTED = [name for name, (_, trusted) in BUILDERS.items() if trusted]
UNTRUSTED = [name for name, (_, trusted) in BUILDERS.items() if not trusted]
# What a builder's Nix answers a user not in its trusted-users: to BuildDerivation, or to
# AddToStoreNar of an unsigned input (2.8: "lacks a valid signature"; 2.34: "lacks a
# signature by a trusted key").
REFUSED = re.compile(r"not privileged to build input-addressed derivations|lacks a (valid )?sig")
NIX_COMMAND = ("--extra-experimental-features", "nix-command")


@pytest.fixture(scope="module")
def ufarm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Farm:
    ensure_rootfs_many(["2.34"])
    specs = [
        make_spec(name, jobs=2, nix=nix, user=USER, trusted=trusted)
        for name, (nix, trusted) in BUILDERS.items()
    ]
    specs += [make_spec("ng28", scheme="ssh-ng"), make_spec("ng234", scheme="ssh-ng", nix="2.34")]
    return farm_factory(tuple(specs))


def _env(farm: Farm, tmp_path: Path, machines: Path | None = None) -> dict[str, str]:
    env = {**os.environ, **farm.env(), "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    env.pop("NIX_REMOTE_SYSTEMS", None)
    if machines is not None:
        env["NIX_REMOTE_SYSTEMS"] = str(machines)
    return env


def _line(farm: Farm, name: str) -> str:
    """Builder `name`'s line in the farm's machines file."""
    alias = farm.alias(name)
    lines = farm.machines_file.read_text().splitlines()
    return next(line for line in lines if re.match(rf"\S+://(\S+@)?{re.escape(alias)} ", line))


def _ssh(farm: Farm, name: str, command: str, *, user: str = USER) -> str:
    done = subprocess.run(
        ["ssh", "-F", str(farm.ssh_config), f"{user}@{farm.alias(name)}", command],
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _nix(argv: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=HANG_GUARD_S
    )


@pytest.mark.parametrize("name", BUILDERS)
def test_the_user_is_listed_and_reaches_the_store_through_the_daemon(
    ufarm: Farm, name: str
) -> None:
    assert _line(ufarm, name).startswith(f"ssh://{USER}@{ufarm.alias(name)} ")
    [machine] = [m for m in ufarm.machines() if ufarm.alias(name) in m.uri]
    assert machine.uri == f"ssh://{USER}@{ufarm.alias(name)}"
    ping = _ssh(ufarm, name, "nix --extra-experimental-features nix-command store ping 2>&1")
    assert "Store URL: daemon" in ping
    ids = _ssh(ufarm, name, 'id -u; id -un; echo "$HOME"; stat -c %U /nix/var/nix/db').split()
    assert ids[0] != "0"
    assert ids[1:] == [USER, f"/home/{USER}", "root"]
    conf = _ssh(ufarm, name, "cat /etc/nix/nix.conf")
    trusted = BUILDERS[name][1]
    assert f"trusted-users = root{' nix' if trusted else ''}\n" in conf
    assert "build-users-group = nixbld\n" in conf
    comms = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in ufarm.processes(name)]
    assert "nix-daemon" in comms


@pytest.mark.parametrize("name", TRUSTED)
def test_a_trusted_user_builds_a_dag(ufarm: Farm, tmp_path: Path, name: str) -> None:
    salt = fresh_salt(name)
    env = _env(ufarm, tmp_path)
    args = [str(DAG), "--argstr", "salt", salt, "--arg", "width", "2", "--arg", "depth", "2"]
    done = nix_build(args, env, builders=_line(ufarm, name))
    assert done.returncode == 0, done.stderr[-4000:]
    [top] = done.stdout.split()
    outputs = outputs_of_graph(top, "dag-")
    assert len(outputs) == 5  # width 2 x depth 2, and the top
    verify = _nix(["nix-store", "--verify-path", *outputs], env)
    assert verify.returncode == 0, verify.stderr
    # Built there (its store marks them as built there), by its daemon's build users.
    assert ufarm.where_built(outputs) == {o: [name] for o in outputs}
    assert f"on 'ssh://{USER}@{ufarm.alias(name)}'" in done.stderr
    uid = int(_ssh(ufarm, name, "id -u"))
    builders = ufarm.run_in(name, ["getent", "group", "nixbld"]).stdout.decode()
    owners = {
        int(line.split(":")[2])
        for line in ufarm.run_in(name, ["getent", "passwd"]).stdout.decode().splitlines()
        if line.split(":")[0] in builders.strip().split(":")[3].split(",")
    }
    assert uid not in owners
    assert owners


@pytest.mark.parametrize("name", UNTRUSTED)
def test_an_untrusted_user_fails_as_with_nixs_own_hook(
    ufarm: Farm, tmp_path: Path, name: str
) -> None:
    env = _env(ufarm, tmp_path)
    args = [str(DAG), "--arg", "width", "2", "--arg", "depth", "2", "--argstr", "salt"]
    ours = nix_build([*args, fresh_salt(f"{name}-ours")], env, builders=_line(ufarm, name))
    theirs = nix_build(
        [*args, fresh_salt(f"{name}-theirs")],
        env,
        builders=_line(ufarm, name),
        hook=BUILD_REMOTE,
    )
    assert theirs.returncode != 0, theirs.stderr[-4000:]
    assert ours.returncode == theirs.returncode, (ours.stderr[-4000:], theirs.stderr[-4000:])
    for done in (ours, theirs):
        assert REFUSED.search(done.stderr), done.stderr[-4000:]
        assert not done.stdout.strip()
    # A refusal is the store answering: the builder is not taken for lost, nor given up.
    assert "connection closed" not in ours.stderr, ours.stderr[-4000:]
    assert "on another builder" not in ours.stderr
    assert ufarm.built_paths(name) == ()

    machines = tmp_path / "machines"
    machines.write_text(_line(ufarm, name) + "\n")
    check = subprocess.run(
        [str(NIXDIST), "check", "--json"],
        env=_env(ufarm, tmp_path, machines),
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    assert check.returncode == 1, (check.stdout, check.stderr)
    [builder] = json.loads(check.stdout)["builders"]
    failed = [f for f in builder["findings"] if f["status"] == "fail"]
    assert [f["check"] for f in failed] == ["store"]
    [store] = failed
    assert (
        f"refuses unsigned paths from {USER}, who is not in its trusted-users" in store["message"]
    )
    assert (
        f"On {ufarm.alias(name)}, set trusted-users = root {USER} in /etc/nix/nix.conf"
        in store["hint"]
    )


def test_stopping_a_builder_stops_its_daemon(ufarm: Farm, tmp_path: Path) -> None:
    name = "t28"
    daemons = [
        pid
        for pid in ufarm.processes(name)
        if Path(f"/proc/{pid}/comm").read_text().strip() == "nix-daemon"
    ]
    assert daemons
    ufarm.stop(name)
    try:
        assert ufarm.processes(name) == []
        for pid in daemons:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
    finally:
        ufarm.start(name)
    # Back with a daemon of its own: the user builds again.
    done = nix_build(
        [
            str(DAG),
            "--argstr",
            "salt",
            fresh_salt(name),
            "--arg",
            "width",
            "1",
            "--arg",
            "depth",
            "1",
        ],
        _env(ufarm, tmp_path),
        builders=_line(ufarm, name),
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize(
    ("name", "user"), [("ng28", None), ("ng234", None), ("t28", USER), ("t234", USER)]
)
def test_ssh_ng_reaches_the_builders_daemon(
    ufarm: Farm, tmp_path: Path, name: str, user: str | None
) -> None:
    env = _env(ufarm, tmp_path)
    uri = f"ssh-ng://{user + '@' if user else ''}{ufarm.alias(name)}"
    if user is None:
        assert _line(ufarm, name).startswith(f"{uri} ")
    ping = _nix(["nix", *NIX_COMMAND, "store", "ping", "--store", uri], env)
    assert ping.returncode == 0, ping.stderr
    assert f"Store URL: {uri}" in ping.stdout + ping.stderr  # Nix 2.8 prints on stderr
    source = tmp_path / f"ssh-ng-{fresh_salt(name)}"
    source.write_text("over ssh-ng\n")
    path = _nix(["nix-store", "--add", str(source)], env).stdout.strip()
    copied = _nix(["nix", *NIX_COMMAND, "copy", "--to", uri, path], env)
    assert copied.returncode == 0, copied.stderr
    there = _nix(["nix-store", "--store", uri, "-q", "--hash", path], env)
    here = _nix(["nix-store", "-q", "--hash", path], env)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout
    assert path in ufarm.builder_store_paths(name)


def test_a_noisy_shell_is_the_users_too(ufarm: Farm) -> None:
    name = "t28"
    ufarm.set_noisy(name, noisy=True)
    try:
        assert ufarm.builder_status(name).noisy
        assert _ssh(ufarm, name, "true") == f"welcome to farm builder {name}\n"
    finally:
        ufarm.set_noisy(name, noisy=False)
    assert _ssh(ufarm, name, "true") == ""
