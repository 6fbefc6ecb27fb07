"""The model against the installed Nix: nix32 and hashes vs `nix-hash`/`nix hash`, and every
.drv written by `nix-instantiate tests/fixtures/drvs.nix` (and its input derivations) vs Nix's
own JSON for it, through the library and through `nixdist drv show`.

Nix's JSON is ``nix show-derivation`` (2.8) or ``nix derivation show`` (2.15+), whose shape
grew (``name``, ``inputDrvs`` objects, ``method``); we print 2.8's, so a later Nix's JSON is
compared after `nixinfo.as_show_derivation_2_8`, which checks every field it folds away.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nixinfo
from nixdist.model import nixbase32
from nixdist.model.derivation import (
    OutputKind,
    parse_derivation,
    render_derivation,
    render_show_json,
    required_system_features,
    to_basic,
)
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.store_path import StorePath

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix"),
]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "drvs.nix"
NIX = ["nix", "--extra-experimental-features", "nix-command", "--option", "substituters", ""]
NIXDIST = [sys.executable, "-c", "import sys; from nixdist.cli import main; sys.exit(main())"]


def _run(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def top_drv() -> str:
    """The fixture's `all` attribute, which depends on every other derivation in it."""
    return _run(
        ["nix-instantiate", "--option", "substituters", "", str(FIXTURE), "-A", "all"]
    ).strip()


def _nix_show(args: list[str]) -> dict[str, dict[str, object]]:
    """The installed Nix's JSON for derivations, in Nix 2.8's shape."""
    return nixinfo.as_show_derivation_2_8(json.loads(nixinfo.show_derivation(args, nix=NIX)))


@pytest.fixture(scope="module")
def nix_json(top_drv: str) -> dict[str, dict[str, object]]:
    return _nix_show(["--recursive", top_drv])


def test_fixture_covers_every_shape(nix_json: dict[str, dict[str, object]]) -> None:
    drvs = {StorePath.parse(p).drv_name: parse_derivation(Path(p).read_text()) for p in nix_json}
    assert len(drvs) == 11
    kinds = {o.kind for d in drvs.values() for o in d.outputs.values()}
    assert kinds == {OutputKind.INPUT_ADDRESSED, OutputKind.FIXED}
    assert len(drvs["drvs-multi"].outputs) == 4
    assert drvs["drvs-fixed-flat"].outputs["out"].hash_algo == "sha256"
    assert drvs["drvs-fixed-recursive"].outputs["out"].hash_algo == "r:sha256"
    assert len(drvs["drvs-with-inputs"].input_srcs) == 2
    assert required_system_features(drvs["drvs-features"]) == {"big-parallel", "kvm"}
    assert required_system_features(drvs["drvs-structured"]) == {"benchmark"}
    assert "__json" in drvs["drvs-structured"].env


def test_every_drv_round_trips_and_matches_nix(nix_json: dict[str, dict[str, object]]) -> None:
    for drv_path, expected in nix_json.items():
        data = Path(drv_path).read_bytes()
        text = data.decode("utf-8", "surrogateescape")
        drv = parse_derivation(text)
        assert render_derivation(drv).encode("utf-8", "surrogateescape") == data, drv_path
        assert render_show_json(drv_path, drv) == {drv_path: expected}, drv_path
        for path in [*drv.input_srcs, *drv.input_drvs, *(o.path for o in drv.outputs.values())]:
            assert str(StorePath.parse(path)) == path


def test_to_basic_names(nix_json: dict[str, dict[str, object]]) -> None:
    for drv_path in nix_json:
        drv = parse_derivation(Path(drv_path).read_text())
        basic = to_basic(drv, drv_path, ["/nix/store/" + "0" * 32 + "-in"])
        assert basic.name == drv.env.get("name") or "__json" in drv.env
        assert basic.input_srcs == (
            ("/nix/store/" + "0" * 32 + "-in",) if drv.input_drvs else drv.input_srcs
        )


def test_cli_show_matches_nix(top_drv: str, nix_json: dict[str, dict[str, object]]) -> None:
    assert json.loads(_run([*NIXDIST, "drv", "show", "--recursive", top_drv])) == nix_json
    compact = _run([*NIXDIST, "drv", "show", "--compact", *sorted(nix_json)])
    assert compact.count("\n") == 1
    assert json.loads(compact) == nix_json
    single = json.loads(_run([*NIXDIST, "drv", "show", top_drv]))
    assert single == _nix_show([top_drv])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Derive([", "expected"),
        (b'DrvWithVersion("xp-dyn-drv",[])', "DrvWithVersion"),
        (b"", "offset 0"),
    ],
)
def test_cli_bad_file_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.drv"
    bad.write_bytes(content)
    result = subprocess.run(
        [*NIXDIST, "drv", "show", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert str(bad) in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.drv"
    result = subprocess.run(
        [*NIXDIST, "drv", "show", str(missing)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("algo", list(HashAlgo))
def test_nix32_and_hash_forms_match_nix(algo: HashAlgo) -> None:
    rng = random.Random(f"nixdist-{algo}")
    digests = [bytes(algo.size), b"\xff" * algo.size] + [
        rng.randbytes(algo.size) for _ in range(30)
    ]
    hexes = [d.hex() for d in digests]
    nix32s = _run(["nix-hash", "--type", str(algo), "--to-base32", *hexes]).split()
    assert nix32s == [nixbase32.encode(d) for d in digests]
    assert _run(["nix-hash", "--type", str(algo), "--to-base16", *nix32s]).split() == hexes
    assert [nixbase32.decode(t, algo.size) for t in nix32s] == digests
    sris = _run([*NIX, "hash", "to-sri", "--type", str(algo), *hexes]).split()
    assert sris == [Hash(algo=algo, digest=d).to_sri() for d in digests]
    for sri, digest in zip(sris, digests, strict=True):
        parsed = Hash.parse(sri)
        assert parsed.digest == digest
        assert Hash.parse(parsed.render()) == parsed


def test_file_hash_matches_nix_hash(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    sample.write_bytes(b"hello nixdist\n")
    for algo in HashAlgo:
        base16 = _run(["nix-hash", "--flat", "--type", str(algo), str(sample)]).strip()
        nix32 = _run(["nix-hash", "--flat", "--base32", "--type", str(algo), str(sample)]).strip()
        ours = Hash.of(algo, sample.read_bytes())
        assert (ours.to_base16(), ours.to_nix32()) == (base16, nix32)
