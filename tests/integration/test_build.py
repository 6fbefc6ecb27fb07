"""`nixdist build` against real builders: the whole graph scheduled by nixdist itself.

A farm of three builders, two of feature ``fa`` and one of feature ``fb``, and a layered DAG
(tests/fixtures/graph.nix). Each test runs the real ``nixdist build`` (client: the host's Nix)
and then checks the stores themselves: the outputs asked for are valid here and verify, equal
to what a local ``nix-build --check`` makes, the intermediate outputs never came here (they
went builder to builder), each build's log is in Nix's log store, the history has every
build; a builder killed mid-run does not fail the run; what no builder can take is built
here when allowed and named otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import StateError
from nixdist.farm.rootfs import ensure_rootfs_many
from nixdist.farm.spec import make_spec
from nixdist.state.config import host_system
from nixdist.state.db import StateDB
from nixrun import FIXTURES, HANG_GUARD_S, LOCAL_BUILD, fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from nixdist.farm import Farm
    from nixdist.farm.spec import BuilderSpec

pytestmark = pytest.mark.integration

GRAPH = FIXTURES / "graph.nix"
NIXDIST = Path(sys.executable).with_name("nixdist")
CLIENTS = ("2.8", "2.26", "2.34")
BUILDERS = (
    make_spec("a1", features=["fa"], jobs=2),
    make_spec("a2", features=["fa"], jobs=2),
    make_spec("b1", features=["fb"], jobs=2),
)


@pytest.fixture(scope="module")
def build_farm(farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm]) -> Farm:
    return farm_factory(BUILDERS)


@pytest.fixture
def env(build_farm: Farm, tmp_path: Path) -> dict[str, str]:
    build_farm.heal()
    return {
        **os.environ,
        **build_farm.env(),
        "NIXDIST_STATE_DIR": str(tmp_path / "state"),
        "NIX_CONFIG": "substituters =\nsandbox = false",
    }


def machines(farm: Farm, path: Path, *, speeds: dict[str, int] | None = None) -> Path:
    """The farm's machines file, with other speed factors for some builders."""
    lines = []
    for line in farm.machines_file.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split()
        name = fields[0].removeprefix(f"ssh://{farm.alias_prefix}")
        if speeds and name in speeds:
            fields[4] = str(speeds[name])
        lines.append(" ".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def nixdist_build(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``nixdist build ARGS`` in `cwd` (where its ``result`` links go)."""
    return subprocess.run(
        [str(NIXDIST), "build", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def build_graph(
    farm: Farm, env: dict[str, str], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``nixdist build`` of tests/fixtures/graph.nix with `args` on all of `farm`, -j0."""
    listed = str(machines(farm, tmp_path / "machines"))
    return nixdist_build(env, tmp_path, str(GRAPH), "--machines", listed, "-j0", *args)


def valid_here(path: str) -> bool:
    checked = subprocess.run(
        ["nix-store", "--check-validity", path], capture_output=True, check=False
    )
    return checked.returncode == 0


def graph_outputs(top_drv: str) -> dict[str, str]:
    """Every output path of the graph's derivations, by drv path."""
    drvs = subprocess.run(
        ["nix-store", "-qR", top_drv], capture_output=True, text=True, check=True
    ).stdout.split()
    found = {}
    for drv in (d for d in drvs if d.endswith(".drv")):
        out = subprocess.run(
            ["nix-store", "-q", "--outputs", drv], capture_output=True, text=True, check=True
        ).stdout.split()
        found[drv] = out[0]
    return found


def instantiate(*args: str) -> str:
    return subprocess.run(
        ["nix-instantiate", str(GRAPH), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def history(env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    try:
        with StateDB.open(Path(env["NIXDIST_STATE_DIR"])) as db:
            return [(b.drv_path, b.machine, b.status, b.phase) for b in db.builds(limit=10000)]
    except StateError:
        return []


def test_a_graph_across_builders_of_two_features(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    salt = fresh_salt("build-features")
    args = ["--argstr", "salt", salt, "--arg", "features", '["fa" "fb"]', "--arg", "kib", "64"]
    top_drv = instantiate(*args)
    outputs = graph_outputs(top_drv)
    result = build_graph(build_farm, env, tmp_path, *args, "-o", str(tmp_path / "result"))
    assert result.returncode == 0, result.stderr[-4000:]
    top = outputs[top_drv]
    assert result.stdout.split() == [top]
    assert Path(tmp_path / "result").resolve() == Path(top)
    subprocess.run(["nix-store", "--verify-path", top], check=True)
    # Only what was asked for came here: the layers went builder to builder.
    assert [drv for drv, out in outputs.items() if valid_here(out)] == [top_drv]
    # Each layer was built where its feature is (layer k needs features[k mod 2]: layers 0
    # and 2 and top fa, layer 1 and stuck fb), and only there.
    where = build_farm.where_built(list(outputs.values()))
    for drv, out in outputs.items():
        feature = "fb" if "-n-1-" in drv or drv.endswith("-stuck.drv") else "fa"
        builders = {"fa": {"a1", "a2"}, "fb": {"b1"}}[feature]
        assert where[out], drv
        assert set(where[out]) <= builders, (drv, where[out])
    # The log of every build is in Nix's log store.
    log = subprocess.run(["nix-store", "-l", top_drv], capture_output=True, text=True, check=True)
    assert "building top on" in log.stdout
    # Every build is in the history, built once, where the stores say.
    rows = history(env)
    assert sorted(r[0] for r in rows) == sorted(outputs)
    assert {(r[2], r[3]) for r in rows} == {("built", "done")}
    # A local build of the same graph makes the same bytes.
    local = ["--builders", "", "--option", "system-features", "fa fb", *LOCAL_BUILD]
    check = subprocess.run(
        ["nix-build", str(GRAPH), *args, "--check", *local, "--no-out-link"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-4000:]


def test_fetch_all_makes_every_output_valid_here(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    args = ["--argstr", "salt", fresh_salt("build-fetch-all"), "--arg", "width", "2"]
    outputs = graph_outputs(instantiate(*args))
    result = build_graph(build_farm, env, tmp_path, *args, "--no-out-link", "--fetch-all")
    assert result.returncode == 0, result.stderr[-4000:]
    assert [out for out in outputs.values() if not valid_here(out)] == []


def test_a_builder_killed_mid_run_does_not_fail_the_run(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    """The victim (speed 10: chosen whenever it has a slot) builds most of the layers, then
    `stuck`, and is killed while it does: `stuck` moves, and what only the victim had is
    built again elsewhere."""
    victim = "a1"
    args = ["--argstr", "salt", fresh_salt("build-killed"), "--argstr", "victim", victim]
    outputs = graph_outputs(instantiate(*args))
    stuck_drv = next(drv for drv in outputs if drv.endswith("-stuck.drv"))
    victim_uri = f"ssh://{build_farm.alias(victim)}"
    listed = machines(build_farm, tmp_path / "machines", speeds={victim: 10})
    proc = subprocess.Popen(
        [str(NIXDIST), "build", str(GRAPH), *args, "--machines", str(listed), "-j0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard, not a time limit
    while (stuck_drv, victim_uri, "running", "build") not in history(env):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "stuck never started on the victim"
        time.sleep(0.01)
    build_farm.freeze(victim)
    build_farm.stop(victim)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-4000:]
    top = next(out_ for drv, out_ in outputs.items() if drv.endswith("-top.drv"))
    assert out.split() == [top]
    subprocess.run(["nix-store", "--verify-path", top], check=True)
    where = build_farm.where_built([outputs[stuck_drv]])
    assert victim not in where[outputs[stuck_drv]]
    rows = history(env)
    assert (stuck_drv, victim_uri, "lost", "build") in rows
    assert any(r[0] == stuck_drv and r[2] == "built" and r[1] != victim_uri for r in rows)
    assert f"'{victim_uri}' failed under 'stuck'" in err
    again = [line for line in err.splitlines() if "its outputs were only there" in line]
    sys.stderr.write(f"built again after the victim died: {len(again)} derivations\n")


def test_what_no_builder_can_take_is_named_or_built_here(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    args = ["--argstr", "salt", fresh_salt("build-nowhere"), "--arg", "features", '["nowhere"]']
    args += ["--arg", "width", "1", "--arg", "depth", "1"]
    outputs = graph_outputs(instantiate(*args))
    listed = str(machines(build_farm, tmp_path / "machines"))
    refused = nixdist_build(
        env, tmp_path, str(GRAPH), *args, "--machines", listed, "-j0", "--no-out-link"
    )
    assert refused.returncode == 1, refused.stderr[-4000:]
    assert "Failed to find a machine for remote build!" in refused.stderr
    assert "nowhere" in refused.stderr
    assert not any(valid_here(out) for out in outputs.values())

    here = {**env, "NIX_CONFIG": env["NIX_CONFIG"] + "\nsystem-features = nowhere"}
    built = nixdist_build(
        here, tmp_path, str(GRAPH), *args, "--machines", listed, "-j1", "--no-out-link"
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert all(valid_here(out) for out in outputs.values())
    assert build_farm.where_built(list(outputs.values())) == {out: [] for out in outputs.values()}


@pytest.fixture(scope="module")
def versions_farm(
    require_farm: None,  # noqa: ARG001 - skips where the farm cannot run
    farm_factory: Callable[[tuple[BuilderSpec, ...]], Farm],
) -> Iterator[Farm]:
    ensure_rootfs_many(sorted({*CLIENTS, "2.8", "2.34"}))
    farm = farm_factory(
        (
            make_spec("v34", nix="2.34", jobs=2),
            make_spec("v28", nix="2.8", jobs=2),
            make_spec("ng34", nix="2.34", jobs=2, scheme="ssh-ng"),
        )
    )
    yield farm
    for version in CLIENTS:
        farm.reset_client(version)


@pytest.mark.parametrize("client", CLIENTS)
def test_clients_of_old_and_new_nix_with_builders_of_mixed_versions(
    versions_farm: Farm, client: str, tmp_path: Path
) -> None:
    """The client's own Nix (its root filesystem, its store) evaluates, imports and checks."""
    env = {
        **os.environ,
        **versions_farm.env(),
        "NIXDIST_STATE_DIR": str(tmp_path / "state"),
    }

    def in_client(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            versions_farm.client_argv(client, argv, cwd=tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            check=False,
        )

    args = ["--argstr", "salt", fresh_salt(f"build-client-{client}"), "--arg", "width", "4"]
    machines_file = str(versions_farm.machines_file)
    result = in_client("nixdist", "build", str(GRAPH), *args, "--machines", machines_file, "-j0")
    assert result.returncode == 0, result.stderr[-4000:]
    [top] = result.stdout.split()
    assert Path(tmp_path / "result").is_symlink()
    assert in_client("nix-store", "--verify-path", top).returncode == 0
    top_drv = in_client("nix-store", "-q", "--deriver", top).stdout.strip()
    assert "building top on" in in_client("nix-store", "-l", top_drv).stdout
    # Built on builders of every version and protocol, as the machines file has them.
    outputs = in_client("nix-store", "-qR", top_drv).stdout.split()
    drvs = [d for d in outputs if d.endswith(".drv")]
    built = in_client("nix-store", "-q", "--outputs", *drvs).stdout.split()
    places = {n for names in versions_farm.where_built(built).values() for n in names}
    assert places == {"v34", "v28", "ng34"}
    local = ["--builders", "", *LOCAL_BUILD, "--option", "substituters", ""]
    check = in_client("nix-build", str(GRAPH), *args, "--check", *local, "--no-out-link")
    assert check.returncode == 0, check.stderr[-4000:]


def interrupt_when(proc: subprocess.Popen[str], moment: Callable[[], bool]) -> tuple[int, str]:
    """Ctrl-C (SIGINT to the run's process group) once `moment` holds; exit status, stderr."""
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard, not a time limit
    while not moment():
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, err


def verify_local_store() -> None:
    check = subprocess.run(
        ["nix-store", "--verify", "--check-contents"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr[-4000:]


def test_ctrl_c_mid_build_stops_the_remote_build(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    builder = "a2"
    args = ["--argstr", "salt", fresh_salt("build-ctrl-c"), "--argstr", "victim", builder]
    outputs = graph_outputs(instantiate(*args))
    stuck_drv = next(drv for drv in outputs if drv.endswith("-stuck.drv"))
    uri = f"ssh://{build_farm.alias(builder)}"
    only = tmp_path / "machines"
    only.write_text(
        next(line for line in build_farm.machines_file.read_text().splitlines() if uri in line)
    )
    proc = subprocess.Popen(
        [str(NIXDIST), "build", str(GRAPH), *args, "--machines", str(only), "-j0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    building = (stuck_drv, uri, "running", "build")
    seen_running: list[str] = []

    def shown_while_it_builds() -> bool:
        if building not in history(env):
            return False
        # The run is visible to `nixdist status` (and so to the dashboard) as it goes.
        status = subprocess.run(
            [str(NIXDIST), "status", "--json", "--machines", str(only)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seen_running.extend(b["drv_path"] for b in json.loads(status.stdout)["running"])
        return True

    code, err = interrupt_when(proc, shown_while_it_builds)
    assert seen_running == [stuck_drv]
    assert code == 130, err[-4000:]
    assert (stuck_drv, uri, "interrupted", "build") in history(env)
    assert not valid_here(outputs[stuck_drv])
    assert not (tmp_path / "result").exists()
    # The build on the builder ended with its session.
    deadline = time.monotonic() + HANG_GUARD_S
    while b"sleep 600" in build_farm.run_in(builder, ["ps", "-eo", "args"]).stdout:
        assert time.monotonic() < deadline, "the remote build outlived the run"
        time.sleep(0.1)
    verify_local_store()


def test_ctrl_c_while_the_outputs_come_here_leaves_nothing_partial(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    args = ["-A", "bigOutput", "--argstr", "salt", fresh_salt("build-ctrl-c-fetch")]
    args += ["--argstr", "size", "400"]
    drv = subprocess.run(
        ["nix-instantiate", str(FIXTURES / "failover.nix"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    [output] = graph_outputs(drv).values()
    proc = subprocess.Popen(
        [str(NIXDIST), "build", drv, "--machines", str(machines(build_farm, tmp_path / "m"))],
        env={**env, "NIX_CONFIG": env["NIX_CONFIG"] + "\nmax-jobs = 0"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    code, err = interrupt_when(proc, lambda: any(r[2] == "built" for r in history(env)))
    assert code in {0, 130}, err[-4000:]  # 0: it was all here before the signal
    if valid_here(output):
        subprocess.run(["nix-store", "--verify-path", output], check=True)
    else:
        assert code == 130
    verify_local_store()


def test_a_daemon_that_does_not_trust_us_builds_by_path(
    versions_farm: Farm, tmp_path: Path
) -> None:
    """``nix-daemon --force-untrusted`` (as Nix's own trustless tests): it takes the .drv
    closure and builds by path, inputs too; nothing unsigned is sent to it."""
    alias = versions_farm.alias("ng34")
    line = next(
        line
        for line in versions_farm.machines_file.read_text().splitlines()
        if line.startswith(f"ssh-ng://{alias} ")
    )
    program = "nix-daemon --extra-experimental-features daemon-trust-override --force-untrusted"
    untrusting = f"ssh-ng://{alias}?remote-program={program.replace(' ', '%20')}"
    (tmp_path / "machines").write_text(line.replace(f"ssh-ng://{alias}", untrusting, 1) + "\n")
    env = {**os.environ, **versions_farm.env(), "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    args = ["--argstr", "salt", fresh_salt("build-untrusting"), "--arg", "width", "2"]
    argv = ["nixdist", "build", str(GRAPH), *args, "--machines", str(tmp_path / "machines")]
    result = subprocess.run(
        versions_farm.client_argv("2.34", [*argv, "-j0", "--no-out-link"], cwd=tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [top] = result.stdout.split()
    assert versions_farm.where_built([top]) == {top: ["ng34"]}


def test_a_flake_installable(build_farm: Farm, env: dict[str, str], tmp_path: Path) -> None:
    system = host_system()
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text(
        f"""{{
  outputs = {{ self }}: let
    mk = name: deps: derivation {{
      inherit name deps; salt = "{fresh_salt("build-flake")}"; system = "{system}";
      PATH = "/usr/bin:/bin"; builder = "/bin/sh";
      args = [ "-c" "mkdir $out; for d in $deps; do cat $d/id >> $out/inputs; done;
        echo $name > $out/id" ];
    }};
  in {{ packages.{system}.default = mk "flake-top" [ (mk "flake-leaf" [ ]) ]; }};
}}
"""
    )
    listed = str(machines(build_farm, tmp_path / "machines"))
    result = nixdist_build(
        env, tmp_path, f"path:{flake}#default", "--machines", listed, "-j0", "--json"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [built] = json.loads(result.stdout)
    assert built["output"] == "out"
    assert Path(built["path"], "inputs").read_text() == "flake-leaf\n"
    assert Path(tmp_path / "result").resolve() == Path(built["path"])


KEEP_GOING = """
let
  mk = name: script: derivation {
    inherit name;
    salt = "SALT";
    system = builtins.currentSystem;
    PATH = "/usr/bin:/bin";
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  bad = mk "bad" "echo first-line; echo the-cause-is-here; exit 3";
  good = mk "good" "echo fine > $out";
in [ (mk "after-bad" "cat ${bad} > $out") good ]
"""


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failing_build_says_why_and_keep_going_builds_the_rest(
    build_farm: Farm, env: dict[str, str], tmp_path: Path, keep_going: bool
) -> None:
    expr = tmp_path / "keep-going.nix"
    expr.write_text(KEEP_GOING.replace("SALT", fresh_salt(f"build-keep-going-{keep_going}")))
    [after_bad_drv, good_drv] = subprocess.run(
        ["nix-instantiate", str(expr)], capture_output=True, text=True, check=True
    ).stdout.split()
    good = graph_outputs(good_drv)[good_drv]
    # b1 only, one slot: the failing build (first, by the order of ready derivations) runs
    # alone; without --keep-going nothing new starts after it.
    uri = f"ssh://{build_farm.alias('b1')}"
    line = next(line for line in build_farm.machines_file.read_text().splitlines() if uri in line)
    fields = line.split()
    fields[3] = "1"
    (tmp_path / "machines").write_text(" ".join(fields) + "\n")
    argv = [str(expr), "--machines", str(tmp_path / "machines"), "-j0", "--no-out-link"]
    result = nixdist_build(env, tmp_path, *argv, *(["--keep-going"] if keep_going else []))
    assert result.returncode == 100, result.stderr[-4000:]
    assert "the-cause-is-here" in result.stderr  # the remote log's tail
    assert "bad.drv" in result.stderr
    assert not valid_here(graph_outputs(after_bad_drv)[after_bad_drv])
    assert valid_here(good) == keep_going
    rows = history(env)
    assert any(r[0].endswith("-bad.drv") and r[2] == "failed" for r in rows)


def test_a_floating_content_addressed_derivation_is_refused_in_one_line(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    expr = tmp_path / "ca.nix"
    expr.write_text(
        'derivation { name = "floating"; system = builtins.currentSystem; builder = "/bin/sh";'
        ' args = [ "-c" "echo hi > $out" ]; __contentAddressed = true;'
        ' outputHashMode = "recursive"; outputHashAlgo = "sha256"; }'
    )
    ca = {**env, "NIX_CONFIG": env["NIX_CONFIG"] + "\nexperimental-features = ca-derivations"}
    listed = str(machines(build_farm, tmp_path / "machines"))
    result = nixdist_build(ca, tmp_path, str(expr), "--machines", listed, "-j0")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "floating content-addressed" in line
    assert "-floating.drv" in line
    assert history(env) == []  # nothing started


def test_what_a_cache_has_is_fetched_not_built(
    build_farm: Farm, env: dict[str, str], tmp_path: Path
) -> None:
    """As nix-build: outputs the substituters have are fetched (here), and only the rest is
    built; a derivation whose output a cache has is never planned."""
    args = ["--argstr", "salt", fresh_salt("build-cache"), "--arg", "width", "2"]
    args += ["--arg", "depth", "2"]
    outputs = graph_outputs(instantiate(*args))
    local = ["--builders", "", *LOCAL_BUILD, "--no-out-link"]
    subprocess.run(
        ["nix-build", str(GRAPH), *args, *local], env=env, capture_output=True, check=True
    )
    leaves = {drv: out for drv, out in outputs.items() if "-n-0-" in drv}
    cache = f"file://{tmp_path / 'cache'}"
    subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            cache,
            *leaves.values(),
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    subprocess.run(
        ["nix-store", "--delete", *outputs.values()], env=env, capture_output=True, check=False
    )
    assert not any(valid_here(out) for out in outputs.values())
    cached = {**env, "NIX_CONFIG": f"substituters = {cache}\nrequire-sigs = false\nsandbox = false"}
    result = build_graph(build_farm, cached, tmp_path, *args, "--no-out-link")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fetching 2 paths from the substituters" in result.stderr
    built = {row[0] for row in history(env)}
    assert built == set(outputs) - set(leaves)
    assert all(valid_here(out) for out in leaves.values())  # fetched here, as nix-build does
