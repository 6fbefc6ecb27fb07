"""nixdist-hook under the Nix that users run: clients 2.26 and 2.34, builders 2.8, 2.26, 2.34.

Each client runs in its Debian root filesystem with a store of its own (`nixdist farm client`),
and builds through nixdist-hook onto builders of each version. Every fact is read where it
happens: the output is valid and verifies in the client's store with exactly the path info the
builder registered (``nix-store --dump-db`` on both sides), the builder that built it is the one
the history names, ``nix-store -l`` shows the remote log, and a failing build, Ctrl-C during the
copy-back and a multi-user (daemon) client behave as Nix's own hook makes them behave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clients import DRVS, client_env, own_hook, run_client, run_in_work
from nixdist.farm.rootfs import ensure_rootfs_many
from nixdist.farm.spec import make_spec
from nixrun import HANG_GUARD_S, fresh_salt, nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from nixdist.farm import Farm
    from nixdist.farm.spec import BuilderSpec

pytestmark = pytest.mark.integration

CLIENTS = ("2.34", "2.26", "2.8")
BUILDERS = {"m28": "2.8", "m226": "2.26", "m234": "2.34"}
NIXDIST = Path(sys.executable).with_name("nixdist")
# Nix 2.17+ reads build-hook as a list: program, then arguments (verbosity comes last). The
# client's `nixdist` (`nixdist.farm.client`) runs the root filesystem's Python on this checkout
# and on the venv's pure Python packages (click, rich).
HOOK_FORMS = {"path": "{bin}/nixdist-hook", "list": "{bin}/nixdist hook"}


@pytest.fixture(scope="module")
def mfarm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Iterator[Farm]:
    ensure_rootfs_many(sorted({*CLIENTS, *BUILDERS.values()}))
    farm = farm_factory(tuple(make_spec(n, jobs=2, nix=v) for n, v in BUILDERS.items()))
    yield farm
    for version in CLIENTS:
        farm.reset_client(version)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "drvs.nix").write_text(DRVS)
    return tmp_path


def _line(farm: Farm, name: str) -> str:
    alias = farm.alias(name)
    return next(
        line
        for line in farm.machines_file.read_text().splitlines()
        if line.startswith(f"ssh://{alias} ")
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(".")))


def _ours(farm: Farm, client: str, work: Path, form: str = "path") -> str:
    """nixdist as the client's build-hook: one absolute path (every Nix) or a list (2.17+)."""
    return HOOK_FORMS[form].format(work=work, bin=farm.client_store_dir(client).parents[1] / "bin")


def _build_argv(
    farm: Farm, builder: str, salt: str, *, hook: str, extra: Sequence[str] = ()
) -> list[str]:
    """nix-build of drvs.nix on `builder` only, with `hook` as the build-hook setting."""
    args = ["drvs.nix", "--argstr", "salt", salt, *extra]
    argv = nix_build_argv(args, builders=_line(farm, builder), hook=None)
    return [*argv, "--option", "build-hook", hook]


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _history(farm: Farm, work: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [str(NIXDIST), "history", "--json"],
        env=client_env(farm, work),
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_GUARD_S,
    )
    return list(json.loads(done.stdout))


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("builder", BUILDERS)
def test_builds_land_whole_in_the_client_store(
    mfarm: Farm, work: Path, client: str, builder: str
) -> None:
    salt = fresh_salt(f"{client}-{builder}")
    form = "list" if builder == "m226" and _version(client) >= (2, 17) else "path"
    done = run_client(
        mfarm,
        client,
        _build_argv(mfarm, builder, salt, hook=_ours(mfarm, client, work, form)),
        work,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert f"remote log of top {salt}" in done.stderr
    drv = run_client(mfarm, client, ["nix-store", "-q", "--deriver", out], work).stdout.strip()
    outputs = run_client(mfarm, client, ["nix-store", "-q", "--outputs", drv], work).stdout.split()
    assert len(outputs) == 2
    # Valid, whole, and registered with the builder's own path info.
    verify = run_client(mfarm, client, ["nix-store", "--verify-path", *outputs], work)
    assert verify.returncode == 0, verify.stderr
    verify = run_client(mfarm, client, ["nix-store", "--verify", "--check-contents"], work)
    assert verify.returncode == 0, verify.stderr
    here = run_client(mfarm, client, ["nix-store", "--dump-db", *outputs], work)
    there = mfarm.run_in(builder, ["nix-store", "--dump-db", *outputs]).stdout.decode()
    assert here.stdout == there
    # Built where the history says; the log is in the client's log store.
    assert mfarm.where_built(outputs) == {o: [builder] for o in outputs}
    history = [b for b in _history(mfarm, work) if b["drv_path"] == drv]
    assert [(b["status"], b["machine"]) for b in history] == [
        ("built", f"ssh://{mfarm.alias(builder)}")
    ]
    log = run_client(mfarm, client, ["nix-store", "-l", drv], work)
    assert f"remote log of top {salt}" in log.stdout
    store_dir = mfarm.client_store_dir(client)
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".nixdist-")]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("builder", BUILDERS)
def test_nix_own_hook_builds_the_same_pairings(
    mfarm: Farm, work: Path, client: str, builder: str
) -> None:
    """The reference: what nixdist is compared with works on this pairing too."""
    argv = _build_argv(mfarm, builder, fresh_salt("theirs"), hook=own_hook(client))
    done = run_client(mfarm, client, argv, work)
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert mfarm.where_built([out]) == {out: [builder]}


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failing_build_fails_as_with_nix_own_hook(mfarm: Farm, work: Path, client: str) -> None:
    results = {}
    for hook in (_ours(mfarm, client, work), own_hook(client)):
        salt = fresh_salt("fail")
        argv = _build_argv(
            mfarm, "m234", salt, hook=hook, extra=["--arg", "fail", "true", "--keep-failed"]
        )
        results[hook] = run_client(mfarm, client, argv, work)
    ours, theirs = results[_ours(mfarm, client, work)], results[own_hook(client)]
    # Nix 2.29+ takes any failed hook for a MiscFailure (exit 1), whatever it exits with; before,
    # it honoured 100 (the build failed) as for a local build, where build-remote exits 1.
    honours_hook_status = _version(client) < (2, 29)
    assert theirs.returncode == 1
    assert ours.returncode == (100 if honours_hook_status else 1)
    for said in (ours.stderr, theirs.stderr):
        assert "first error line" in said
        assert "  second error line" in said
        assert "failed with exit code 3" in said
        # A 2.34 builder's error has several lines, indented as Nix indents its own.
        assert "\n       Reason: builder failed with exit code 3.\n" in said
    kept = "kept on the remote builder due to `--keep-failed`"
    assert kept in ours.stderr  # said on every version (Nix's own hook says it since 2.30)
    assert (kept in theirs.stderr) == (_version(client) >= (2, 30))
    store_dir = mfarm.client_store_dir(client)
    assert not [
        p
        for p in store_dir.iterdir()
        if "-top-fail" in p.name and not p.name.endswith((".drv", ".lock"))
    ]


def test_ctrl_c_during_the_copy_back_leaves_nothing(mfarm: Farm, work: Path) -> None:
    client = "2.34"
    salt = fresh_salt("ctrl-c")
    argv = _build_argv(mfarm, "m28", salt, hook="nixdist-hook", extra=["--arg", "big", "400"])
    store_dir = mfarm.client_store_dir(client)
    before = _names(store_dir)
    proc = subprocess.Popen(
        mfarm.client_argv(client, argv, cwd=work),
        env=client_env(mfarm, work),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not any(n.startswith(".nixdist-") for n in _names(store_dir)):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "the copy-back never started"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    deadline = time.monotonic() + HANG_GUARD_S
    while any(n.startswith(".nixdist-") for n in _names(store_dir)):
        assert time.monotonic() < deadline, "the staged output was never removed"
        time.sleep(0.05)
    new = _names(store_dir) - before
    tops = [n for n in new if f"top-{salt}" in n and not n.endswith((".drv", ".lock"))]
    for name in tops:  # an output is there only if it is valid and whole
        path = f"/nix/store/{name}"
        verify = run_client(mfarm, client, ["nix-store", "--verify-path", path], work)
        assert verify.returncode == 0, (name, verify.stderr)


def test_a_multi_user_client_builds_through_its_daemon(mfarm: Farm, work: Path) -> None:
    salt = fresh_salt("daemon")
    argv = _build_argv(mfarm, "m226", salt, hook="nixdist-hook")
    done = run_client(mfarm, "2.34", argv, work, daemon=True)
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    verify = run_client(mfarm, "2.34", ["nix-store", "--verify-path", out], work)
    assert verify.returncode == 0, verify.stderr
    assert mfarm.where_built([out]) == {out: ["m226"]}


def _report(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    start = lines.index("Failed to find a machine for remote build!")
    count = int(lines[start + 3].split()[0])
    return lines[start : start + 5 + count]


@pytest.mark.parametrize("client", CLIENTS)
def test_no_machine_report_is_the_one_nix_own_hook_prints(
    mfarm: Farm, work: Path, client: str
) -> None:
    machines = work / "machines"
    machines.write_text(
        f"{_line(mfarm, 'm28')}\n"
        "ssh://nonexistent.invalid x86_64-linux,i686-linux - 2 1 kvm bench\n"
    )
    (work / "feat.nix").write_text(
        '{ salt }: derivation { name = "feat-${salt}"; system = builtins.currentSystem;'
        ' builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; requiredSystemFeatures = [ "kvm"'
        ' "big-parallel" ]; }\n'
    )
    salt = fresh_salt("report")
    said = {}
    for hook in (_ours(mfarm, client, work), own_hook(client)):
        argv = nix_build_argv(
            ["feat.nix", "--argstr", "salt", salt], builders=f"@{machines}", hook=None
        )
        done = run_client(mfarm, client, [*argv, "--option", "build-hook", hook], work)
        assert done.returncode != 0
        said[hook] = _report(done.stderr)
    assert said[_ours(mfarm, client, work)] == said[own_hook(client)]


@pytest.mark.parametrize("client", ["host", "2.34"])
def test_a_chroot_store_gets_its_outputs(mfarm: Farm, work: Path, client: str) -> None:
    """``--store DIR``: the .drv is read from, and the outputs land in, DIR's own store."""
    salt = fresh_salt("chroot")
    chroot = work / "chroot"
    hook = str(NIXDIST.with_name("nixdist-hook")) if client == "host" else "nixdist-hook"
    argv = _build_argv(mfarm, "m234", salt, hook=hook, extra=["--store", str(chroot)])
    if client == "host":
        done = run_in_work(mfarm, argv, work)
        nix_store = ["nix-store"]
    else:
        done = run_client(mfarm, client, argv, work)
        nix_store = mfarm.client_argv(client, ["nix-store"], cwd=work)
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert (chroot / out.lstrip("/")).is_file()
    verify = run_in_work(mfarm, [*nix_store, "--store", str(chroot), "--verify-path", out], work)
    assert verify.returncode == 0, verify.stderr
    assert mfarm.where_built([out]) == {out: ["m234"]}
    assert not (Path("/nix/store") / Path(out).name).exists()
