"""`nixdist farm up`'s options, through click's runner, with a fake farm in place of a real one
(bringing builders up needs root and sshd: tests/integration/test_farm.py does that)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner, Result

from nixdist.cli import cli
from nixdist.cli import farm as farm_cli

if TYPE_CHECKING:
    from pathlib import Path

    from nixdist.farm import BuilderSpec


@dataclass
class FakeFarm:
    """What `up` uses of a `Farm`; records the builders it was asked for."""

    directory: Path
    asked: list[tuple[BuilderSpec, ...] | None] = field(default_factory=list)

    @property
    def machines_file(self) -> Path:
        return self.directory / "machines"

    @property
    def ssh_config(self) -> Path:
        return self.directory / "ssh_config"

    @property
    def nix_sshopts(self) -> str:
        return f"-F {self.ssh_config}"

    def up(self, specs: tuple[BuilderSpec, ...] | None) -> tuple[()]:
        self.asked.append(specs)
        return ()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeFarm:
    the_farm = FakeFarm(tmp_path)
    monkeypatch.setattr(farm_cli, "_farm", lambda *_args: the_farm)
    return the_farm


def up(*args: str) -> Result:
    return CliRunner().invoke(cli, ["farm", "up", *args])


def names(specs: tuple[BuilderSpec, ...] | None) -> list[str] | None:
    return None if specs is None else [s.name for s in specs]


def test_count_asks_for_that_many_plain_builders(fake: FakeFarm) -> None:
    result = up("--count", "3")
    assert result.exit_code == 0, result.output
    assert [names(s) for s in fake.asked] == [["b1", "b2", "b3"]]
    assert result.stderr == ""


def test_builders_still_works_as_count_with_a_warning(fake: FakeFarm) -> None:
    result = up("--builders", "2")
    assert result.exit_code == 0, result.output
    assert [names(s) for s in fake.asked] == [["b1", "b2"]]
    assert "'nixdist farm up --builders N' is deprecated; use --count N" in result.stderr


def test_count_and_builders_together_are_refused(fake: FakeFarm) -> None:
    result = up("--count", "2", "--builders", "2")
    assert result.exit_code == 2
    assert "give --count only" in result.stderr
    assert fake.asked == []


def test_without_a_count_the_farm_keeps_its_builders(fake: FakeFarm) -> None:
    assert up().exit_code == 0
    assert fake.asked == [None]


def test_help_shows_count_and_hides_the_old_name() -> None:
    result = CliRunner().invoke(cli, ["farm", "up", "--help"])
    assert result.exit_code == 0
    assert "--count N" in result.output
    assert "--builders" not in result.output
