"""`nixdist machines` as a process, and the machines parser against the installed Nix.

The CLI runs as the installed console script, with an environment of our own (its own
``NIX_CONF_DIR``, no user files), on files and on ``NIX_REMOTE_SYSTEMS``/``nix.conf``/
``NIX_CONFIG``. Bad input must give one ``nixdist: error: FILE:LINE: ...`` line and exit 1,
never a traceback.

Agreement with Nix: ``nix-build -j0 --option builders TEXT`` on a derivation for a system no
machine has makes Nix parse TEXT (in build-remote and in its own "unable to start any build"
check) without connecting anywhere or creating slot locks (machines that do not match are
skipped before the slot loop). On a parse error build-remote exits without answering Nix
(whose wording for the error itself varies by version); otherwise it prints its "available
machines" report, which we compare with ours, rendered in the report's format of the
installed Nix.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import nixinfo
from nixdist.errors import ConfigError
from nixdist.model.machines import parse_machines

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nixdist.model.machines import Machine

pytestmark = pytest.mark.integration

NIXDIST = Path(sys.executable).with_name("nixdist")
ERROR_PREFIX = "nixdist: error: "

SEED = """\
# remote-systems.conf from the Nix manual's "Distributed Builds" (seed 000)
nix@mcflurry.labs.cs.uu.nl x86_64-darwin /home/nix/.ssh/id_quarterpounder_auto 2
nix@scratchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 1 kvm
nix@itchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2
nix@poochie.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2 kvm perf
"""
SEED_JSON = [
    {
        "uri": "ssh://nix@mcflurry.labs.cs.uu.nl",
        "systems": ["x86_64-darwin"],
        "ssh_key": "/home/nix/.ssh/id_quarterpounder_auto",
        "max_jobs": 2,
        "speed_factor": 1.0,
        "supported_features": [],
        "mandatory_features": [],
        "public_host_key": None,
    },
    {
        "uri": "ssh://nix@scratchy.labs.cs.uu.nl",
        "systems": ["i686-linux"],
        "ssh_key": "/home/nix/.ssh/id_scratchy_auto",
        "max_jobs": 8,
        "speed_factor": 1.0,
        "supported_features": ["kvm"],
        "mandatory_features": [],
        "public_host_key": None,
    },
    {
        "uri": "ssh://nix@itchy.labs.cs.uu.nl",
        "systems": ["i686-linux"],
        "ssh_key": "/home/nix/.ssh/id_scratchy_auto",
        "max_jobs": 8,
        "speed_factor": 2.0,
        "supported_features": [],
        "mandatory_features": [],
        "public_host_key": None,
    },
    {
        "uri": "ssh://nix@poochie.labs.cs.uu.nl",
        "systems": ["i686-linux"],
        "ssh_key": "/home/nix/.ssh/id_scratchy_auto",
        "max_jobs": 8,
        "speed_factor": 2.0,
        "supported_features": ["kvm"],
        "mandatory_features": ["perf"],
        "public_host_key": None,
    },
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Nix configuration is only what a test writes into conf/."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"NIX_REMOTE_SYSTEMS", "NIX_CONFIG", "NIX_USER_CONF_FILES", "NIX_CONF_DIR"}
    }
    return clean | {"NIX_CONF_DIR": str(conf_dir), "NIX_USER_CONF_FILES": "", "COLUMNS": "200"}


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NIXDIST), "machines", *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        env=env,
        cwd=cwd,
        check=False,
    )


def run_json(args: list[str], env: dict[str, str]) -> list[dict[str, object]]:
    result = run([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


def assert_one_line_error(result: subprocess.CompletedProcess[str], start: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX + start), lines[0]


# ---------------------------------------------------------------------------------------
# Files


def test_seed_file_as_json(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "remote-systems.conf"
    path.write_text(SEED)
    assert run_json([str(path)], env) == SEED_JSON


def test_seed_file_as_table(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "remote-systems.conf"
    path.write_text(SEED)
    result = run([str(path)], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "4 build machines" in out
    for header in ("uri", "systems", "key", "jobs", "speed", "features", "mandatory", "host key"):
        assert header in out
    rows = [line for line in out.splitlines() if "ssh://" in line]
    assert len(rows) == 4
    poochie = next(row for row in rows if "poochie" in row)
    cells = [cell.strip() for cell in poochie.strip("│ ").split("│")]
    assert cells == [
        "ssh://nix@poochie.labs.cs.uu.nl",
        "i686-linux",
        "/home/nix/.ssh/id_scratchy_auto",
        "8",
        "2",
        "kvm",
        "perf",
        "no",
    ]


def test_host_key_column(tmp_path: Path, env: dict[str, str]) -> None:
    key = base64.b64encode(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey\n").decode()
    path = tmp_path / "machines"
    path.write_text(f"b1 x86_64-linux - 1 1 - - {key}\n")
    row = next(line for line in run([str(path)], env).stdout.splitlines() if "ssh://b1" in line)
    assert row.rstrip("│ ").endswith("yes")
    assert run_json([str(path)], env)[0]["public_host_key"] == key


def test_includes_relative_to_the_working_directory(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "more").write_text("b2 ; b3 - - 4\n")
    (tmp_path / "machines").write_text("b1\n@d/more\n@d/missing\n")
    result = subprocess.run(
        [str(NIXDIST), "machines", "machines", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert [m["uri"] for m in json.loads(result.stdout)] == ["ssh://b1", "ssh://b2", "ssh://b3"]


def test_default_system_comes_from_nix_conf(tmp_path: Path, env: dict[str, str]) -> None:
    (Path(env["NIX_CONF_DIR"]) / "nix.conf").write_text("system = riscv64-linux\n")
    path = tmp_path / "machines"
    path.write_text("b1\nb2 aarch64-linux\n")
    assert [m["systems"] for m in run_json([str(path)], env)] == [
        ["riscv64-linux"],
        ["aarch64-linux"],
    ]


def test_non_utf8_bytes_pass_through_json(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "machines"
    path.write_bytes(b"b\xe9\xff1 x86_64-linux /key-\xff # caf\xe9\n")
    result = subprocess.run(
        [str(NIXDIST), "machines", str(path), "--json"], capture_output=True, env=env, check=True
    )
    assert b'"ssh://b\xe9\xff1"' in result.stdout
    assert b'"/key-\xff"' in result.stdout
    table = run([str(path)], env)
    assert table.returncode == 0, table.stderr
    assert "ssh://b\ufffd\ufffd1" in table.stdout


# ---------------------------------------------------------------------------------------
# Environment and nix.conf


def test_default_is_etc_machines_of_the_conf_dir(env: dict[str, str]) -> None:
    conf_dir = Path(env["NIX_CONF_DIR"])
    assert run_json([], env) == []
    (conf_dir / "machines").write_text("b1 - - 3\n")
    assert [(m["uri"], m["max_jobs"]) for m in run_json([], env)] == [("ssh://b1", 3)]
    result = run([], env)
    assert f"builders = @{conf_dir}/machines" in result.stdout


def test_builders_from_nix_conf(tmp_path: Path, env: dict[str, str]) -> None:
    conf_dir = Path(env["NIX_CONF_DIR"])
    (tmp_path / "m").write_text("b2\n")
    (conf_dir / "nix.conf").write_text(
        f"builders = b1 x86_64-linux ; @{tmp_path / 'm'}\n!include local.conf\n"
    )
    assert [m["uri"] for m in run_json([], env)] == ["ssh://b1", "ssh://b2"]
    (conf_dir / "local.conf").write_text("builders = b9\n")
    assert [m["uri"] for m in run_json([], env)] == ["ssh://b9"]


def test_user_conf_files_and_nix_config(tmp_path: Path, env: dict[str, str]) -> None:
    (Path(env["NIX_CONF_DIR"]) / "nix.conf").write_text("builders = global\n")
    user = tmp_path / "user.conf"
    user.write_text("builders = user\n")
    env_user = env | {"NIX_USER_CONF_FILES": str(user)}
    assert [m["uri"] for m in run_json([], env_user)] == ["ssh://user"]
    env_config = env_user | {"NIX_CONFIG": "builders = fromenv - - 2"}
    assert [m["uri"] for m in run_json([], env_config)] == ["ssh://fromenv"]


def test_nix_remote_systems_overrides_and_lists_several_files(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (Path(env["NIX_CONF_DIR"]) / "nix.conf").write_text("builders = ignored\n")
    (tmp_path / "one").write_text(SEED)
    (tmp_path / "two").write_text("extra - - 9\n")
    remote = f"{tmp_path / 'one'}:{tmp_path / 'two'}:{tmp_path / 'missing'}"
    data = run_json([], env | {"NIX_REMOTE_SYSTEMS": remote})
    assert data == [*SEED_JSON, {**SEED_JSON[0], **_defaults("ssh://extra", 9)}]
    table = run([], env | {"NIX_REMOTE_SYSTEMS": remote})
    assert "5 build machines (NIX_REMOTE_SYSTEMS=" in table.stdout


def _host_system() -> str:
    from nixdist.state.config import host_system  # noqa: PLC0415 - what the CLI uses

    return host_system()


def _defaults(uri: str, jobs: int) -> dict[str, object]:
    return {
        "uri": uri,
        "systems": [_host_system()],
        "ssh_key": None,
        "max_jobs": jobs,
        "speed_factor": 1.0,
        "supported_features": [],
        "mandatory_features": [],
        "public_host_key": None,
    }


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("b1\nb2 x86_64-linux - many\n", 2, "field 4 (max jobs): 'many' is not"),
        ("# c\n\nb1 ; b2 - - 1 fast\n", 3, "field 5 (speed factor): 'fast' is not"),
        ("b - - - -1\n", 1, "field 5 (speed factor): '-1' is negative"),
        ("b - - - - - - not-base64!\n", 1, "field 8 (public host key): 'not-base64!' is not"),
        ("- x86_64-linux\n", 1, "field 1 (store URI): the store URI is required"),
    ],
)
def test_bad_file(tmp_path: Path, env: dict[str, str], text: str, line: int, field: str) -> None:
    path = tmp_path / "machines"
    path.write_text(text)
    for args in ([str(path)], [str(path), "--json"]):
        result = run(args, env)
        assert_one_line_error(result, f"{path}:{line}: {field}")
        assert result.stdout == ""


def test_bad_included_file_is_named(tmp_path: Path, env: dict[str, str]) -> None:
    inner = tmp_path / "inner"
    inner.write_text("\nb - - x\n")
    (Path(env["NIX_CONF_DIR"]) / "machines").write_text(f"@{inner}\n")
    assert_one_line_error(run([], env), f"{inner}:2: field 4 (max jobs): 'x'")


def test_include_cycle(tmp_path: Path, env: dict[str, str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(f"@{b}\n")
    b.write_text(f"x\n@{a}\n")
    assert_one_line_error(run([str(a)], env), f"{b}:2: include cycle: ")


def test_include_of_a_directory(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "machines"
    path.write_text(f"b1\n@{tmp_path}\n")
    assert_one_line_error(run([str(path)], env), f"{path}:2: cannot read included file")


def test_missing_and_unreadable_files(tmp_path: Path, env: dict[str, str]) -> None:
    assert_one_line_error(run([str(tmp_path / "nope")], env), f"{tmp_path / 'nope'}: no such")
    assert_one_line_error(run([str(tmp_path)], env), f"{tmp_path}: cannot read")


def test_bad_nix_conf(env: dict[str, str]) -> None:
    conf = Path(env["NIX_CONF_DIR"]) / "nix.conf"
    conf.write_text("max-jobs = 1\nbuilders x\n")
    assert_one_line_error(run([], env), f"{conf}:2: illegal configuration line")


def test_random_garbage_never_gives_a_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    rng = random.Random(2026)
    alphabet = b" \t\n;#@-,+.=0123456789abcxyz/\xff\xe9\x00\x0b"
    path = tmp_path / "machines"
    (tmp_path / "inc").write_bytes(b"@" + str(path).encode() + b"\n")
    for _ in range(25):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        path.write_bytes(data + b"\n@" + str(tmp_path / "inc").encode() * rng.randrange(2))
        for args in ([str(path)], [str(path), "--json"]):
            result = run(args, env)
            assert result.returncode in {0, 1}, result.stderr
            assert "Traceback" not in result.stderr
            if result.returncode:
                assert len(result.stderr.splitlines()) == 1
                assert result.stderr.startswith(ERROR_PREFIX)


# ---------------------------------------------------------------------------------------
# Agreement with the installed Nix

NOWHERE = "nixdist-nowhere"  # the probe derivation's system: no machine below has it
ELSEWHERE = "nixdist-elsewhere"
PROBE_NIX = f"""
derivation {{
  name = "nixdist-machines-probe";
  system = "{NOWHERE}";
  builder = "/bin/sh";
  args = [ "-c" "echo > $out" ];
}}
"""
REPORT_HEADER = "(systems, maxjobs, supportedFeatures, mandatoryFeatures)"
# build-remote died before answering: how Nix (every version) says its hook failed to reply.
HOOK_DIED = "unexpected EOF reading a line"
FLOAT_SPEED_FACTOR = (2, 20)  # Nix before this takes only an unsigned int
SYSTEMS_AS_SET = (2, 20)  # Nix from this keeps a machine's systems as a set (sorted)

# (builders text, does our parser differ from Nix before 2.20 on purpose?)
AGREEMENT = [
    ("h", False),
    (f"nix@h {ELSEWHERE} /k 2", False),
    (f"h {ELSEWHERE},{ELSEWHERE}-2 - +5 007 kvm,big-parallel perf QUJDRA", False),
    (f"h {ELSEWHERE}-z,{ELSEWHERE}-a,{ELSEWHERE}-m", False),  # systems: file order or sorted
    (f"a {ELSEWHERE} - 4294967295 ; b {ELSEWHERE}\n# c\nc {ELSEWHERE} - 3 # x", False),
    (f"h {ELSEWHERE} - - - - - QQ==x!", False),
    (f"h\t{ELSEWHERE}\t-\t3\r", False),
    (f"h {ELSEWHERE} - 0 0 - - -", False),
    (f"h {ELSEWHERE} - 4294967296", False),
    (f"h {ELSEWHERE} - 0x10", False),
    (f"h {ELSEWHERE} - -1", False),
    (f"h {ELSEWHERE} - 1.5", False),
    (f"h {ELSEWHERE} - - x", False),
    (f"h {ELSEWHERE} - - -2", False),
    (f"h {ELSEWHERE} - - - - - a$b", False),
    (f"h {ELSEWHERE} - - - - - QU_D", False),
    (f"- {ELSEWHERE}", False),
    (f"ssh://h?a=1;b {ELSEWHERE}", False),
    ("@/nonexistent/machines", False),
    ("@/", False),  # a directory: a read error other than ENOENT
    (f"h {ELSEWHERE} - - 2.5", True),  # before 2.20 an unsigned int; we take 2.20+'s float
    (f"h {ELSEWHERE} - - 1e3", True),
]


def _nix_report(machines: tuple[Machine, ...], *, bracketed: bool) -> list[str]:
    """Our machines as build-remote lists them: (systems, maxjobs, supported, mandatory).

    Nix 2.8 prints the lists bare, ``(a, b, 1, kvm, )``; later Nix in brackets,
    ``([a, b], 1, [kvm], [])``: `bracketed`, as the installed Nix's report shows. Features
    are sets (sorted) in every version; systems too from 2.20, which has no tell in the
    output but the version, and were a list in the machines line's order before.
    """
    sort_systems = nixinfo.nix_version() >= SYSTEMS_AS_SET

    def listed(items: Iterable[str]) -> str:
        joined = ", ".join(items)
        return f"[{joined}]" if bracketed else joined

    def line(m: Machine) -> str:
        systems = listed(sorted(m.systems) if sort_systems else m.systems)
        supported = listed(sorted(m.supported_features))
        return f"({systems}, {m.max_jobs}, {supported}, {listed(sorted(m.mandatory_features))})"

    return [line(m) for m in machines]


def _read(path: str) -> str | None:
    from nixdist.state.config import read_config_file  # noqa: PLC0415 - the one config reader

    return read_config_file(path)


@pytest.fixture(scope="module")
def probe_drv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("nix-build") is None:
        pytest.skip("needs nix")
    path = tmp_path_factory.mktemp("probe") / "probe.nix"
    path.write_text(PROBE_NIX)
    return path


@pytest.mark.parametrize(("builders", "differs"), AGREEMENT)
def test_agrees_with_nix(probe_drv: Path, builders: str, differs: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE_SYSTEMS"}
    nix = subprocess.run(
        [
            "nix-build", str(probe_drv), "--no-out-link", "-j0",
            "--option", "substituters", "",
            "--option", "builders", builders,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )  # fmt: skip
    assert nix.returncode != 0  # nothing can build it, by design
    nix_rejects = HOOK_DIED in nix.stderr
    ours: tuple[Machine, ...] = ()
    try:
        ours = parse_machines(builders, read_file=_read, default_system=_host_system())
    except ConfigError:
        we_reject = True
    else:
        we_reject = False
    if differs and nix_rejects:
        assert nixinfo.nix_version() < FLOAT_SPEED_FACTOR, nix.stderr
        assert not we_reject
        return
    assert we_reject == nix_rejects, nix.stderr
    if nix_rejects or not ours:
        assert REPORT_HEADER not in nix.stderr
        return
    lines = nix.stderr.splitlines()
    start = lines.index(REPORT_HEADER) + 1
    reported = lines[start : start + len(ours)]
    assert reported == _nix_report(ours, bracketed=reported[0].startswith("([")), nix.stderr
