"""W6, relay: a DAG whose layers alternate between builders of two features.

The derivations are tests/fixtures/graph.nix's with ``features = [ "fa" "fb" ]``: `depth`
layers of `width` derivations, layer k requiring feature ``fa`` (k even) or ``fb`` (k odd),
each node depending on every node of the layer before; then ``stuck`` (on the whole last
layer) and ``top`` (on ``stuck``) continue the cycle. Every output holds `kib` KiB (zeros,
plus a few bytes). The farm has `builders` builders with feature ``fa`` (``fa1`` ...) and as
many with ``fb`` (``fb1`` ...), `jobs` slots each, so no layer is built where the layer before
it was: every output must move builder to builder. Only ``top`` is asked for.

The contenders (bench/contenders.py) get ``top.drv``, instantiated before the clock starts
with a fresh salt. The hooks make every output valid locally (Nix does: each build's outputs
are copied back to the client) and upload each input from the local store to the builder that
needs it; ``nixdist build`` copies an input from the builder that made it to the one that
needs it, as a stream through the client process but not its store, and brings only ``top``
here.

Measures: wall time, and the bytes through the client (bench/traffic.py): through the local
store (received + sent), what was relayed, and the sum over the client's network links.
Goals (issue 14): nixdist build's bytes through the local store <= the outputs asked for and
the sources (here: ``top``; the derivations have no sources), and its wall time <= 0.5x
build-remote's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

import traffic
from common import FIXTURES, Goal, Outcome, Row, fmt_ratio, med_best, median, ratio
from contenders import BUILD_REMOTE, NIXDIST, NIXDIST_BUILD, available
from farmbench import BuildRun, FarmBench, profile_dir, round_order
from w1_dag import describe_run, times_of

from nixdist.farm import make_spec
from nixdist.farm.builds import fresh_salt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from nixdist.farm import BuilderSpec

GOAL_BYTES: Final = 1.0  # nixdist build through the local store / (asked + sources)
GOAL_WALL: Final = 0.5  # nixdist build / build-remote
CONTENDERS: Final = (BUILD_REMOTE, NIXDIST, NIXDIST_BUILD)
FEATURES: Final = ("fa", "fb")
MIB: Final = 1 << 20

RELAY_NIX: Final = r"""
{ salt, width, depth, kib }:
import ./graph.nix { inherit salt width depth kib; features = [ "fa" "fb" ]; }
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class W6Options:
    rounds: int = 3
    width: int = 4
    depth: int = 6
    kib: int = 4096
    builders: int = 2  # per feature
    jobs: int = 2
    profile_dir: str | None = None  # run nixdist-hook under cProfile, see farmbench
    nix_options: tuple[str, ...] = ()  # extra nix-build arguments, e.g. --option k v
    client_nix: str | None = None  # the client's Nix (a farm client), None: the host's

    @property
    def contenders(self) -> tuple[str, ...]:
        return available(CONTENDERS, self.client_nix)

    @property
    def derivations(self) -> int:
        return self.width * self.depth + 2


def specs_for(opts: W6Options) -> list[BuilderSpec]:
    return [
        make_spec(f"{feature}{i}", features=[feature], jobs=opts.jobs)
        for feature in FEATURES
        for i in range(1, opts.builders + 1)
    ]


def run(base: Path, opts: W6Options, log: Callable[[str], None]) -> Outcome:
    bench = FarmBench(
        base,
        "w6",
        profile_dir=profile_dir(opts.profile_dir, "w6"),
        client_nix=opts.client_nix,
        specs=specs_for(opts),
    )
    runs: list[BuildRun] = []
    try:
        bench.up()
        bench.write_expr("graph.nix", (FIXTURES / "graph.nix").read_text())
        expr = bench.write_expr("relay.nix", RELAY_NIX)
        for rnd in range(opts.rounds):
            for contender in round_order(rnd, opts.contenders):
                drvs = bench.instantiate(
                    expr,
                    fresh_salt(f"w6-{contender}-r{rnd}"),
                    width=opts.width,
                    depth=opts.depth,
                    kib=opts.kib,
                )
                run_ = bench.timed_run(
                    workload="w6",
                    contender=contender,
                    rnd=rnd,
                    drvs=drvs,
                    derivations=opts.derivations,
                    extra=opts.nix_options,
                    measure=lambda d: traffic.measure(bench, d).as_json(),
                )
                runs.append(run_)
                log(describe_run(run_) + "\n    " + _describe_traffic(run_))
    finally:
        bench.teardown()
    return outcome(opts, runs)


def _mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def _describe_traffic(run: BuildRun) -> str:
    if not run.traffic:
        return "no traffic measured"
    t = traffic.Traffic.from_json(run.traffic)
    return (
        f"MiB: received {_mib(t.received)}, sent {_mib(t.sent)} ({t.copies} copies into"
        f" builders), relayed {_mib(t.relayed)}; asked {_mib(t.asked)} + sources"
        f" {_mib(t.sources)}"
    )


def median_traffic(runs: Sequence[BuildRun], contender: str) -> dict[str, float]:
    """The median of each traffic figure over `contender`'s successful runs."""
    measured = [r.traffic for r in runs if r.contender == contender and r.ok and r.traffic]
    keys = measured[0].keys() if measured else ()
    return {k: median([float(m[k]) for m in measured]) for k in keys}


def outcome(opts: W6Options, runs: list[BuildRun]) -> Outcome:
    times = times_of(runs, CONTENDERS)
    moved = {c: median_traffic(runs, c) for c in CONTENDERS}
    build = moved[NIXDIST_BUILD]
    least = build.get("asked", float("nan")) + build.get("sources", float("nan"))
    goals = (
        Goal(
            workload="W6",
            measure="bytes through the local store, nixdist build / (asked + sources)",
            value=ratio(build.get("through_store", float("nan")), least),
            target=GOAL_BYTES,
        ),
        Goal(
            workload="W6",
            measure="wall nixdist build / build-remote",
            value=ratio(median(times[NIXDIST_BUILD]), median(times[BUILD_REMOTE])),
            target=GOAL_WALL,
        ),
    )
    data: dict[str, object] = {
        "options": asdict(opts),
        "builders": [
            {"name": s.name, "features": sorted(s.supported_features)} for s in specs_for(opts)
        ],
        "derivations": opts.derivations,
        "seconds": times,
        "median_s": {c: median(t) for c, t in times.items()},
        "traffic_median_bytes": moved,
        "runs": [asdict(r) for r in runs],
    }
    rows = _rows(opts, times, moved, goals)
    return Outcome(key="w6", data=data, rows=rows, goals=goals)


def _cells(moved: Mapping[str, Mapping[str, float]], key: str) -> dict[str, str]:
    """One traffic figure of each contender, in MiB."""
    return {c: _mib(m[key]) if key in m else "-" for c, m in moved.items()}


def _rows(
    opts: W6Options,
    times: Mapping[str, Sequence[float]],
    moved: Mapping[str, Mapping[str, float]],
    goals: Sequence[Goal],
) -> tuple[Row, ...]:
    bytes_goal, wall_goal = goals
    store, links, relayed = (_cells(moved, k) for k in ("through_store", "over_links", "relayed"))
    least = _mib(moved[NIXDIST_BUILD].get("asked", 0) + moved[NIXDIST_BUILD].get("sources", 0))
    layout = f"{opts.builders}+{opts.builders} builders x {opts.jobs}"
    return (
        Row(
            workload="W6",
            measure=f"{opts.derivations} drvs, layers fa/fb, {opts.kib} KiB each, {layout}: wall s",
            build_remote=med_best(times[BUILD_REMOTE]),
            nixdist=med_best(times[NIXDIST]),
            nixdist_build=med_best(times[NIXDIST_BUILD]),
            ratio=fmt_ratio(ratio(median(times[NIXDIST]), median(times[BUILD_REMOTE]))),
        ),
        Row(
            workload="W6",
            measure="  ratio nixdist build / build-remote (wall)",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(wall_goal.value),
            goal=wall_goal,
        ),
        Row(
            workload="W6",
            measure="  MiB through the local store (received + sent)",
            build_remote=store[BUILD_REMOTE],
            nixdist=store[NIXDIST],
            nixdist_build=store[NIXDIST_BUILD],
            ratio="",
        ),
        Row(
            workload="W6",
            measure=f"  ratio nixdist build's / asked + sources, {least} MiB",
            build_remote="",
            nixdist="",
            ratio=fmt_ratio(bytes_goal.value),
            goal=bytes_goal,
        ),
        Row(
            workload="W6",
            measure="  MiB relayed builder to builder through the client process",
            build_remote=relayed[BUILD_REMOTE],
            nixdist=relayed[NIXDIST],
            nixdist_build=relayed[NIXDIST_BUILD],
            ratio="",
        ),
        Row(
            workload="W6",
            measure="  MiB over the client's links (received + sent + 2 x relayed)",
            build_remote=links[BUILD_REMOTE],
            nixdist=links[NIXDIST],
            nixdist_build=links[NIXDIST_BUILD],
            ratio="",
        ),
    )
