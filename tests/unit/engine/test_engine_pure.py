"""The pure parts of nixdist build: estimates by name, where copies come from, nix-build's
names for out-links, what the arguments mean."""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.engine.console import Console
from nixdist.engine.copies import runs_by_source
from nixdist.engine.estimates import Estimates, derivation_name
from nixdist.engine.places import HERE, Places
from nixdist.engine.results import out_link_names
from nixdist.engine.targets import Expression, Target, split_arguments
from nixdist.errors import ConfigError, NixdistError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import StorePath

H = "0" * 31


def path(n: int, name: str = "p") -> StorePath:
    return StorePath.parse(f"/nix/store/{n:032d}-{name}")


def info(n: int, *refs: int) -> PathInfo:
    return PathInfo(
        path=path(n),
        deriver=None,
        nar_hash=Hash.of(HashAlgo.SHA256, b"%d" % n),
        references=frozenset(path(r) for r in refs),
        nar_size=100 + n,
    )


def test_estimates_are_the_median_of_a_name_whatever_its_hash() -> None:
    known = Estimates(
        [
            (f"/nix/store/{'a' * 32}-hello-2.12.drv", "ssh://b1", 4.0),
            (f"/nix/store/{'b' * 32}-hello-2.12.drv", "ssh://b1", 10.0),
            (f"/nix/store/{'c' * 32}-hello-2.12.drv", "ssh://fast", 3.0),  # work 6 at speed 2
            (f"/nix/store/{'d' * 32}-other.drv", "ssh://gone", 1.5),
        ],
        lambda machine: {"ssh://fast": 2.0}.get(machine, 1.0),
    )
    assert known(f"/nix/store/{'e' * 32}-hello-2.12.drv") == 6.0
    assert known(f"/nix/store/{'f' * 32}-other.drv") == 1.5
    assert known(f"/nix/store/{'f' * 32}-unknown.drv") is None
    assert derivation_name(f"/nix/store/{'a' * 32}-a-b-1.0.drv") == "a-b-1.0"


def test_paths_come_from_here_first_else_from_a_builder_other_than_the_destination() -> None:
    places = Places()
    places.add([info(1), info(2, 1)], HERE)
    places.add([info(2, 1), info(3, 2)], "ssh://b1")
    places.add([info(4)], "ssh://b2")
    assert places.source(path(2), avoid="ssh://b9") == HERE
    assert places.source(path(3), avoid="ssh://b9") == "ssh://b1"
    assert places.source(path(3), avoid="ssh://b1") is None
    assert places.closure([path(3)]).keys() == {path(1), path(2), path(3)}
    places.forget_place("ssh://b1")
    assert places.where(path(3)) == frozenset()


def test_copies_run_in_dependency_order_cut_by_source() -> None:
    infos = {p.path: p for p in (info(1), info(2, 1), info(3, 2), info(4, 3))}
    source = {path(1): HERE, path(2): HERE, path(3): "ssh://b1", path(4): "ssh://b1"}
    assert runs_by_source(infos, source.get) == [
        (HERE, [path(1), path(2)]),
        ("ssh://b1", [path(3), path(4)]),
    ]
    with pytest.raises(NixdistError, match="valid nowhere"):
        runs_by_source(infos, {**source, path(3): None}.get)


@given(st.lists(st.sampled_from([HERE, "ssh://b1", "ssh://b2"]), min_size=1, max_size=12))
def test_every_path_is_copied_once_after_its_references(sources: list[str]) -> None:
    chain = {info(n).path: info(n, n - 1) if n else info(n) for n in range(len(sources))}
    runs = runs_by_source(chain, lambda p: sources[int(p.hash_part)])
    order = [p for _, paths in runs for p in paths]
    assert order == sorted(chain)  # a chain: each after the one it refers to
    assert all(a != b for (a, _), (b, _) in itertools.pairwise(runs))


def test_out_links_are_named_as_nix_build_names_them() -> None:
    a, b = Target(drv_path="/nix/store/a.drv"), Target(drv_path="/nix/store/b.drv")
    outputs = [(a, "out", path(1)), (a, "dev", path(2)), (b, "out", path(3)), (b, "lib", path(4))]
    assert out_link_names(outputs, "result") == [
        "result",
        "result-dev",
        "result-2",
        "result-2-lib",
    ]


def test_arguments_are_derivations_or_what_nix_instantiate_takes() -> None:
    drv = f"/nix/store/{H}1-x.drv"
    targets, installables, rest = split_arguments(
        [drv, f"{drv}!out,dev", "./default.nix", ".#hello", "nixpkgs#hello"]
    )
    assert targets == [Target(drv_path=drv), Target(drv_path=drv, outputs=("out", "dev"))]
    assert installables == [".#hello", "nixpkgs#hello"]
    assert rest == ["./default.nix"]
    with pytest.raises(ConfigError):
        Target.parse("/tmp/not-a.drv")
    argv = Expression(
        paths=("f.nix",), attrs=("a",), args=(("n", "1"),), argstrs=(("s", "v"),)
    ).instantiate_argv()
    assert argv == ["nix-instantiate", "-A", "a", "--arg", "n", "1", "--argstr", "s", "v", "f.nix"]
    assert Expression().instantiate_argv() == ["nix-instantiate", "./default.nix"]
    assert Expression(paths=("1 + 1",), is_expr=True).instantiate_argv()[:2] == [
        "nix-instantiate",
        "-E",
    ]


def test_without_a_terminal_the_console_says_one_line_per_event() -> None:
    stream = io.StringIO()
    ticks = iter(float(n) for n in range(100))
    console = Console(stream, clock=lambda: next(ticks))
    drv = f"/nix/store/{H}1-hello-2.12.drv"
    console.begin([], local_jobs=0)
    console.started(drv, "ssh://b1")
    console.built(drv, "ssh://b1")  # talkative: not shown at the default level
    console.failed(drv, "", "Failed to find a machine for remote build!")
    console.moved(drv, "ssh://b2", "connection lost")
    console.end()
    assert stream.getvalue().splitlines() == [
        "[   1.0s] building 'hello-2.12' on ssh://b1",
        f"[   2.0s] error: cannot build '{drv}': Failed to find a machine for remote build!",
        (
            "[   3.0s] warning: 'ssh://b2' failed under 'hello-2.12': connection lost;"
            " building it again"
        ),
    ]
