"""Four nix-build clients at once on two builders with two slots each.

Nix counts only its own jobs; nixdist's slot locks (Nix's ``current-load`` files, shared by
every hook process of the machine) must keep the four clients together within each builder's
max-jobs. What happened is observed on the builders: each build appends start and end times to
a file under /var/tmp, which every builder's mount namespace shares with the host.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import make_spec
from nixrun import HANG_GUARD_S, HOOKTEST, fresh_salt, nix_build_argv

if TYPE_CHECKING:
    from collections.abc import Callable

    from nixdist.farm import BuilderSpec, Farm

pytestmark = pytest.mark.integration

CLIENTS = 4
PER_CLIENT = 50


def _hook_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(word.endswith(b"nixdist-hook") for word in argv[:2]):
            found.append(int(entry.name))
    return found


def test_four_clients_share_two_builders_without_exceeding_max_jobs(
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm], tmp_path: Path
) -> None:
    farm = farm_factory((make_spec("c1", jobs=2), make_spec("c2", jobs=2)))
    load_dir = tmp_path / "current-load"
    env = {
        **os.environ,
        **farm.env(),
        "NIXDIST_STATE_DIR": str(tmp_path / "state"),
        "NIX_CURRENT_LOAD": str(load_dir),
    }
    record = Path("/var/tmp") / f"nixdist-clients-{fresh_salt('record')}"
    runs = [
        subprocess.Popen(
            nix_build_argv(
                [
                    str(HOOKTEST),
                    "-A",
                    "fifty",
                    "--argstr",
                    "salt",
                    fresh_salt(f"client{i}"),
                    "--argstr",
                    "record",
                    str(record),
                    "--argstr",
                    "sleep",
                    "0.2",
                ],
                builders=f"@{farm.machines_file}",
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(CLIENTS)
    ]
    outputs: list[str] = []
    for run in runs:
        out, err = run.communicate(timeout=HANG_GUARD_S)
        assert run.returncode == 0, err[-4000:]
        outputs += out.split()
    try:
        events = [line.split() for line in record.read_text().splitlines()]
    finally:
        record.unlink(missing_ok=True)

    assert len(outputs) == CLIENTS * PER_CLIENT
    places = farm.where_built(outputs)
    assert all(len(names) == 1 for names in places.values()), places
    assert len(events) == 2 * CLIENTS * PER_CLIENT
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for kind, _name, where, _when in sorted(events, key=lambda e: (float(e[3]), e[0] == "start")):
        running[where] += 1 if kind == "start" else -1
        peak[where] = max(peak[where], running[where])
    assert set(peak) == {"c1", "c2"}
    assert peak["c1"] <= 2
    assert peak["c2"] <= 2
    assert peak["c1"] + peak["c2"] >= 3, f"the clients never ran in parallel: {dict(peak)}"

    # Nothing left behind: no hook process, every slot lock free, no build or serve session
    # still running on a builder (only its sshd).
    assert _hook_processes() == []
    for lock in load_dir.iterdir():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anyone still holds it
        finally:
            os.close(fd)
    for name in ("c1", "c2"):
        leftovers = [
            (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
            for pid in farm.processes(name)
            if Path(f"/proc/{pid}").exists()
        ]
        assert all("sshd" in cmd and "nix-store" not in cmd for cmd in leftovers), leftovers
