"""Copy progress reaches Nix's own UI: the hook's ``@nix`` copy activities, as Nix shows them.

``nix build --log-format internal-json`` prints every activity Nix knows, including the ones
it took over from the hook's stderr, so what Nix made of them can be read back: a
"copying N paths to 'ssh://…'" activity, one "copying path '…' to '…'" activity per input
sent, and the download of the output "from '…'", with byte progress for each path.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

from nixrun import HANG_GUARD_S, HOOK, HOOKTEST, fresh_salt

if TYPE_CHECKING:
    from .conftest import FarmFixture

pytestmark = pytest.mark.integration

COPY_PATH = 100
COPY_PATHS = 103
PROGRESS = 105


def test_nix_build_shows_what_the_hook_copies_to_and_from_which_builder(
    local_farm: FarmFixture,
) -> None:
    builder = local_farm.alias("b2")
    salt = fresh_salt("progress")
    result = subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "build",
            "--file",
            str(HOOKTEST),
            "bigParallel",
            "--argstr",
            "salt",
            salt,
            "--no-link",
            "--json",
            "-j0",
            "--option",
            "substituters",
            "",
            "--builders",
            f"@{local_farm.machines}",
            "--option",
            "build-hook",
            str(HOOK),
            "--log-format",
            "internal-json",
            "-v",
        ],
        env=local_farm.nix_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = json.loads(result.stdout)[0]["outputs"]["out"]
    events = [
        json.loads(line.removeprefix("@nix "))
        for line in result.stderr.splitlines()
        if line.startswith("@nix ")
    ]
    starts = {e["id"]: e for e in events if e["action"] == "start"}
    texts = [e["text"] for e in starts.values()]
    uri = f"ssh://{builder}"
    # uploads are shown the same way (this derivation has no inputs to send; other tests'
    # derivations may have sent them already)
    ups = [
        e for e in starts.values() if e["type"] == COPY_PATHS and e["text"].endswith(f" to '{uri}'")
    ]
    downs = [
        e
        for e in starts.values()
        if e["type"] == COPY_PATHS and e["text"].endswith(f" from '{uri}'")
    ]
    assert len(downs) == 1, texts
    assert downs[0]["text"] == f"copying 1 paths from '{uri}'"
    path_downs = [e for e in starts.values() if e["type"] == COPY_PATH and e["fields"][0] == output]
    assert len(path_downs) == 1, texts
    assert path_downs[0]["text"] == f"copying path '{output}' from '{uri}'"
    assert path_downs[0]["fields"] == [output, uri, "local"]
    done = [
        e["fields"]
        for e in events
        if e["action"] == "result" and e["id"] == path_downs[0]["id"] and e["type"] == PROGRESS
    ]
    assert done, "no byte progress for the downloaded path"
    assert done[-1][0] == done[-1][1] > 0  # all of its NAR
    stopped = {e["id"] for e in events if e["action"] == "stop"}
    assert {e["id"] for e in (*ups, *downs, *path_downs)} <= stopped
