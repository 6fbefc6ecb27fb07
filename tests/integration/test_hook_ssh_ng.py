"""nixdist-hook with ``ssh-ng://`` builders: ``nix-daemon --stdio`` of Nix 2.8 and 2.34.

Clients 2.8 and 2.34 (each in its root filesystem, `nixdist farm client`) build through
nixdist-hook on builders listed as ``ssh-ng://`` (the worker protocol), and through Nix's own
hook on the same builders for reference. Facts are read where they happen: the outputs'
path info in the client equals the builder's (``nix-store --dump-db``), the build log is in
the client's log store, a failing build says what Nix's own hook says, and a daemon that does
not trust us gets the ``.drv`` closure and a build by path (Nix 2.34's hook does the same),
or refuses an unsigned input with the words Nix's own hook shows.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clients import DRVS, client_hook, own_hook, run_client
from nixdist.farm.rootfs import ensure_rootfs_many
from nixdist.farm.spec import make_spec
from nixrun import fresh_salt, nix_build_argv

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator, Sequence

    from nixdist.farm import Farm
    from nixdist.farm.spec import BuilderSpec

pytestmark = pytest.mark.integration

CLIENTS = ("2.34", "2.8")
BUILDERS = {"n28": "2.8", "n234": "2.34"}
NIXDIST = Path(sys.executable).with_name("nixdist")
SRC = Path(__file__).resolve().parents[2] / "src"
#: What Nix's own tests run as an untrusting daemon (nix-daemon-untrusting.sh).
UNTRUSTING = "nix-daemon --extra-experimental-features daemon-trust-override --force-untrusted"


@pytest.fixture(scope="module")
def ngfarm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Iterator[Farm]:
    ensure_rootfs_many(sorted({*CLIENTS, *BUILDERS.values()}))
    specs = tuple(make_spec(n, jobs=2, nix=v, scheme="ssh-ng") for n, v in BUILDERS.items())
    farm = farm_factory(specs)
    yield farm
    for version in CLIENTS:
        farm.reset_client(version)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "drvs.nix").write_text(DRVS)
    return tmp_path


def _line(farm: Farm, name: str, **params: str) -> str:
    """The builder's machines line, with `params` added to its URI."""
    prefix = f"ssh-ng://{farm.alias(name)}"
    line = next(
        line
        for line in farm.machines_file.read_text().splitlines()
        if line.startswith(prefix + " ")
    )
    if not params:
        return line
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return prefix + "?" + query + line[len(prefix) :]


def _build(
    farm: Farm,
    client: str,
    line: str,
    salt: str,
    work: Path,
    *,
    hook: str,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    argv = nix_build_argv(["drvs.nix", "--argstr", "salt", salt, *extra], builders=line, hook=None)
    return run_client(farm, client, [*argv, "--option", "build-hook", hook], work)


def _outputs(farm: Farm, client: str, out: str, work: Path) -> tuple[str, list[str]]:
    drv = run_client(farm, client, ["nix-store", "-q", "--deriver", out], work).stdout.strip()
    outputs = run_client(farm, client, ["nix-store", "-q", "--outputs", drv], work).stdout.split()
    return drv, outputs


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("builder", BUILDERS)
def test_a_dag_builds_on_an_ssh_ng_builder(
    ngfarm: Farm, work: Path, client: str, builder: str
) -> None:
    salt = fresh_salt(f"ng-{client}-{builder}")
    done = _build(
        ngfarm, client, _line(ngfarm, builder), salt, work, hook=client_hook(ngfarm, client)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert f"remote log of top {salt}" in done.stderr
    drv, outputs = _outputs(ngfarm, client, out, work)
    assert len(outputs) == 2
    verify = run_client(ngfarm, client, ["nix-store", "--verify", "--check-contents"], work)
    assert verify.returncode == 0, verify.stderr
    here = run_client(ngfarm, client, ["nix-store", "--dump-db", *outputs], work)
    there = ngfarm.run_in(builder, ["nix-store", "--dump-db", *outputs]).stdout.decode()
    assert here.stdout == there
    assert ngfarm.where_built(outputs) == {o: [builder] for o in outputs}
    # The daemon's log stream reached the client's log store, for `nix log`.
    log = run_client(ngfarm, client, ["nix-store", "-l", drv], work)
    assert f"remote log of top {salt}" in log.stdout
    leaf = next(
        p
        for p in run_client(ngfarm, client, ["nix-store", "-qR", drv], work).stdout.split()
        if f"leaf-{salt}.drv" in p
    )
    assert f"leaf log {salt}" in run_client(ngfarm, client, ["nix-store", "-l", leaf], work).stdout


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("builder", BUILDERS)
def test_nix_own_hook_builds_the_same_pairings(
    ngfarm: Farm, work: Path, client: str, builder: str
) -> None:
    """The reference: Nix's own hook builds on these ssh-ng builders too."""
    done = _build(
        ngfarm, client, _line(ngfarm, builder), fresh_salt("own"), work, hook=own_hook(client)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [out] = done.stdout.split()
    assert ngfarm.where_built([out]) == {out: [builder]}


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failing_build_fails_as_with_nix_own_hook(ngfarm: Farm, work: Path, client: str) -> None:
    said = {}
    for hook in (client_hook(ngfarm, client), own_hook(client)):
        done = _build(
            ngfarm,
            client,
            _line(ngfarm, "n234"),
            fresh_salt("fail"),
            work,
            hook=hook,
            extra=["--arg", "fail", "true"],
        )
        assert done.returncode != 0
        said[hook] = done.stderr
    for stderr in said.values():
        assert "first error line" in stderr
        assert "  second error line" in stderr
        assert "failed with exit code 3" in stderr
        assert "\n       Reason: builder failed with exit code 3.\n" in stderr
    assert "lacks a signature" not in said[client_hook(ngfarm, client)]


def test_an_untrusting_daemon_builds_by_path(ngfarm: Farm, work: Path) -> None:
    """The daemon does not trust us: it gets the .drv closure and builds the derivation by
    its path, its inputs too (as with Nix 2.34's own hook)."""
    line = _line(ngfarm, "n234", **{"remote-program": UNTRUSTING})
    for hook in (client_hook(ngfarm, "2.34"), own_hook("2.34")):
        salt = fresh_salt("untrusted")
        done = _build(ngfarm, "2.34", line, salt, work, hook=hook)
        assert done.returncode == 0, done.stderr[-4000:]
        [out] = done.stdout.split()
        _, outputs = _outputs(ngfarm, "2.34", out, work)
        assert ngfarm.where_built(outputs) == {o: ["n234"] for o in outputs}
        verify = run_client(ngfarm, "2.34", ["nix-store", "--verify-path", *outputs], work)
        assert verify.returncode == 0, verify.stderr


def test_an_untrusting_daemon_refuses_an_unsigned_input_as_with_nix_own_hook(
    ngfarm: Farm, work: Path
) -> None:
    """An input built here (input-addressed, unsigned) cannot be sent to a daemon that does
    not trust us: both hooks fail with the daemon's words, and nothing is retried."""
    line = _line(ngfarm, "n234", **{"remote-program": UNTRUSTING})
    said = {}
    for hook in (client_hook(ngfarm, "2.34"), own_hook("2.34")):
        salt = fresh_salt("unsigned")
        local = run_client(
            ngfarm,
            "2.34",
            [
                "nix-build",
                "drvs.nix",
                "-A",
                "leaf",
                "--argstr",
                "salt",
                salt,
                "--no-out-link",
                "--option",
                "builders",
                "",
                "--max-jobs",
                "1",
            ],
            work,
        )
        assert local.returncode == 0, local.stderr[-4000:]
        said[hook] = _build(ngfarm, "2.34", line, salt, work, hook=hook)
    for done in said.values():
        assert done.returncode == 1
        assert "lacks a signature by a trusted key" in done.stderr
    assert "on another builder" not in said[client_hook(ngfarm, "2.34")].stderr
