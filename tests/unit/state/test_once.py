from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from nixdist.state.once import first_time

if TYPE_CHECKING:
    from pathlib import Path


def test_first_caller_per_parent_and_message_speaks(tmp_path: Path) -> None:
    assert first_time(tmp_path, "skipping builder x", parent=4242)
    assert not first_time(tmp_path, "skipping builder x", parent=4242)
    assert first_time(tmp_path, "skipping builder y", parent=4242)
    assert first_time(tmp_path, "skipping builder x", parent=4343)


def test_markers_of_exited_parents_are_forgotten(tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    assert first_time(tmp_path, "m", parent=exited.pid)
    assert list((tmp_path / "once").iterdir())
    assert first_time(tmp_path, "m", parent=1)  # pid 1 always exists
    names = [p.name.partition("-")[0] for p in (tmp_path / "once").iterdir()]
    assert names == ["1"]


def test_without_a_usable_state_directory_it_always_speaks(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert first_time(blocker, "m", parent=1)
    assert first_time(blocker, "m", parent=1)
