"""Integration fixtures: a local farm of real builders (sshd + own Nix store each).

The session farm lives in a temporary directory with an alias prefix unique to this pytest
process (``nixdist-test<pid>-b1`` …) and ports chosen at start, so it never collides with a
farm the user runs (nor with that farm's slot-lock files in Nix's ``current-load``). Its
builders, for routing tests:

    b1  host system only, 2 jobs
    b2  host system, supports big-parallel
    b3  host system + aarch64-linux (x86_64-linux on an aarch64 host) as extra platform
    b4  host system, mandatory feature benchmark

Fixtures:
    local_farm        the session `FarmFixture` (farm, machines file, ssh config, env)
    farm              the session `Farm`, with every fault switch undone after each test
    farm_machines     path of its Nix machines file
    farm_ssh_config   path of its ssh config (use as ``NIX_SSHOPTS="-F <path>"``)
    farm_nix_env      os.environ plus NIX_SSHOPTS, for running nix against the farm
    require_farm      only skips where the farm cannot run (for tests that start their own)
    farm_factory      make more farms: ``farm_factory(specs)`` -> a running `Farm` in a new
                      temp dir with a unique alias prefix; all are stopped at session end

Tests that need the farm are skipped (with the reason) where it cannot run: not root, or
sshd, nix or util-linux missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import BuilderSpec, Farm, host_system, make_spec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

REQUIRED_TOOLS = ("nix-store", "nix-build", "ssh", "ssh-keygen", "unshare", "nsenter", "setsid")


def farm_unavailable() -> str | None:
    """Why the farm cannot run here, or None."""
    if os.geteuid() != 0:
        return "the local farm needs root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin") is None:
        missing.append("sshd")
    if missing:
        return f"the local farm needs {', '.join(missing)}"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"mount namespaces are not available here: {probe.stderr.strip()}"
    return None


def other_system() -> str:
    return "x86_64-linux" if host_system() == "aarch64-linux" else "aarch64-linux"


def farm_test_builders() -> tuple[BuilderSpec, ...]:
    return (
        make_spec("b1", jobs=2),
        make_spec("b2", features=["big-parallel"]),
        make_spec("b3", systems=[host_system(), other_system()]),
        make_spec("b4", mandatory=["benchmark"]),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FarmFixture:
    farm: Farm
    machines: Path
    ssh_config: Path

    def alias(self, name: str) -> str:
        return self.farm.alias(name)

    def nix_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NIX_REMOTE_SYSTEMS", None)
        env.update(self.farm.env())
        return env


def start_farm(directory: Path, *, alias_prefix: str, specs: tuple[BuilderSpec, ...]) -> Farm:
    reason = farm_unavailable()
    if reason:
        pytest.skip(reason)
    farm = Farm(directory, alias_prefix=alias_prefix)
    farm.up(specs)
    return farm


@pytest.fixture(scope="session")
def require_farm() -> None:
    """Skip the test where the farm cannot run."""
    reason = farm_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def local_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmFixture]:
    directory = tmp_path_factory.mktemp("farm")
    farm = start_farm(
        directory, alias_prefix=f"nixdist-test{os.getpid()}-", specs=farm_test_builders()
    )
    try:
        yield FarmFixture(farm=farm, machines=farm.machines_file, ssh_config=farm.ssh_config)
    finally:
        farm.down()


@pytest.fixture(scope="session")
def farm_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[tuple[BuilderSpec, ...]], Farm]]:
    made: list[Farm] = []

    def make(specs: tuple[BuilderSpec, ...]) -> Farm:
        directory = tmp_path_factory.mktemp("farm")
        farm = start_farm(
            directory, alias_prefix=f"nixdist-test{os.getpid()}x{len(made)}-", specs=specs
        )
        made.append(farm)
        return farm

    try:
        yield make
    finally:
        for farm in made:
            farm.down()


@pytest.fixture
def farm(local_farm: FarmFixture) -> Iterator[Farm]:
    local_farm.farm.heal()
    yield local_farm.farm
    local_farm.farm.heal()


@pytest.fixture
def farm_machines(local_farm: FarmFixture) -> Path:
    return local_farm.machines


@pytest.fixture
def farm_ssh_config(local_farm: FarmFixture) -> Path:
    return local_farm.ssh_config


@pytest.fixture
def farm_nix_env(local_farm: FarmFixture) -> dict[str, str]:
    return local_farm.nix_env()
