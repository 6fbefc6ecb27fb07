"""A busy builder is waited for inside the hook instead of answering ``postpone``.

Nix retries a postponed derivation only after its ``build-poll-interval`` (5 s), so with more
derivations than slots every ``# postpone`` costs seconds. Three independent derivations on a
single one-slot builder with ``-j0``: with the slot wait (NIXDIST_SLOT_WAIT) the hook holds on
until the slot frees and the history shows only accepts; with 0 it postpones as build-remote
does — which shows that the first half can tell the two apart.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import make_spec
from nixdist.state.db import StateDB
from nixrun import HOOKTEST, fresh_salt, nix_build, ok

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nixdist.farm import BuilderSpec, Farm

pytestmark = pytest.mark.integration


def _build_three(farm: Farm, tmp_path: Path, slot_wait: str) -> list[str]:
    """Build three independent derivations on the one-slot builder; the decisions made."""
    state = tmp_path / f"state-{slot_wait}"
    env = {
        **os.environ,
        **farm.env(),
        "NIXDIST_STATE_DIR": str(state),
        "NIX_CURRENT_LOAD": str(tmp_path / f"load-{slot_wait}"),
        "NIXDIST_SLOT_WAIT": slot_wait,
    }
    salt = fresh_salt(f"wait{slot_wait}")
    args = [str(HOOKTEST), "--argstr", "salt", salt, "--argstr", "sleep", "0.5"]
    for i in range(3):
        args += ["-A", f"plains.{i}"]
    outputs = ok(nix_build(args, env, builders=f"@{farm.machines_file}"))
    assert len(outputs) == 3
    assert all(names == ["w1"] for names in farm.where_built(outputs).values())
    with StateDB.open(state) as db:
        return [d.decision for d in db.decisions()]


def test_busy_builder_is_waited_for_instead_of_postponing(
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm], tmp_path: Path
) -> None:
    farm = farm_factory((make_spec("w1", jobs=1),))

    waited = _build_three(farm, tmp_path, "60")
    assert waited == ["accept"] * 3

    postponed = _build_three(farm, tmp_path, "0")
    assert postponed.count("accept") == 3
    assert "postpone" in postponed
