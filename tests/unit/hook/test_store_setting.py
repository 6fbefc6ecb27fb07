"""The hook reads Nix's ``store`` setting before it answers anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nixdist.protocol.hook import encode_settings

HOOK = Path(sys.executable).with_name("nixdist-hook")


def test_a_store_the_hook_cannot_import_into_is_declined_permanently(tmp_path: Path) -> None:
    settings = {"builders": "ssh://b1 x86_64-linux", "store": "s3://bucket", "system": "x"}
    done = subprocess.run(
        [str(HOOK), "3"],
        input=encode_settings(settings),
        capture_output=True,
        check=False,
        env={"NIXDIST_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0
    lines = done.stderr.decode().splitlines()
    assert lines[-1] == "# decline-permanently"
    assert len(lines) == 2
    assert "nixdist cannot build remotely for this store" in lines[0]
    assert "s3://bucket" in lines[0]
