"""``nixdist build`` from its arguments to its exit status, in order:

targets   nix-instantiate's .drv paths, or the .drv paths given (`engine.targets`)
fetch     what Nix's substituters have, fetched here, as nix-build would (`engine.substitutes`)
closure   the .drv files, read and parsed here
here      which outputs are valid here, and the path infos of what the builds will need
plan      the graph of what must be built, by critical path (`scheduler.graph`)
run       the builds, over the builders (the hook's picker) and here (`engine.run`)
results   the outputs asked for brought here, rooted, printed (`engine.results`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nixdist.engine import substitutes
from nixdist.engine.estimates import Estimates
from nixdist.engine.places import HERE, Places
from nixdist.engine.results import add_roots, fetch_here, out_link_names, target_outputs
from nixdist.engine.run import Run, RunOptions
from nixdist.engine.sessions import Sessions, store_opener
from nixdist.engine.targets import (
    Expression,
    Target,
    evaluate_installables,
    instantiate,
    read_closure,
)
from nixdist.errors import NixdistError
from nixdist.hook.picker import MachinePicker
from nixdist.model.local_store import DEFAULT_LOCAL_STORE
from nixdist.model.store_path import StorePath
from nixdist.protocol.hook import HookSettings
from nixdist.protocol.logjson import Verbosity
from nixdist.protocol.serve import BuildOptions
from nixdist.scheduler.graph import plan
from nixdist.settings import load_settings
from nixdist.state.config import nix_view, read_machines_file

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.engine.console import Console
    from nixdist.engine.run import RunReport
    from nixdist.model.derivation import Derivation
    from nixdist.model.machines import Machine
    from nixdist.scheduler.graph import BuildGraph

#: nix-build's exit statuses: a build failed; a build timed out; anything else.
EXIT_BUILD_FAILED: Final = 100
EXIT_TIMED_OUT: Final = 101
EXIT_OTHER: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildArgs:
    targets: tuple[Target, ...] = ()
    installables: tuple[str, ...] = ()  # flake installables
    expression: Expression | None = None
    machines_file: str | None = None
    local_jobs: int | None = None  # None: Nix's max-jobs
    out_link: str | None = "result"  # None: --no-out-link
    keep_going: bool = False
    fetch_all: bool = False
    build: BuildOptions = field(default_factory=BuildOptions)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOutcome:
    status: int
    outputs: tuple[tuple[str, str, str], ...] = ()  # (drv path, output name, store path)
    report: RunReport | None = None
    fetched_bytes: int = 0


def build(args: BuildArgs, environ: Mapping[str, str], console: Console) -> BuildOutcome:
    """Run one ``nixdist build``; raises `NixdistError` for what stops it before building."""
    view = nix_view(environ)
    machines = (
        view.machines
        if args.machines_file is None
        else read_machines_file(args.machines_file, default_system=view.system)
    )
    targets = list(args.targets)
    if args.installables:
        targets += evaluate_installables(args.installables, environ)
    if args.expression is not None:
        targets += instantiate(args.expression, environ)
    store = DEFAULT_LOCAL_STORE
    _substitute(targets, environ, console)
    drvs = read_closure(store, [t.drv_path for t in targets])
    options = RunOptions(
        keep_going=args.keep_going,
        local_jobs=view.settings.max_jobs if args.local_jobs is None else args.local_jobs,
        substitute=view.settings.builders_use_substitutes,
        build=args.build,
    )
    hook_settings = HookSettings(
        builders=view.settings.builders,
        system=view.system,
        system_features=view.settings.system_features,
        extra_platforms=view.settings.extra_platforms,
        max_jobs=options.local_jobs,
        builders_use_substitutes=view.settings.builders_use_substitutes,
    )
    picker = MachinePicker(machines, hook_settings, load_settings(environ), environ, console)
    sessions = Sessions(
        store_opener(
            store=store,
            machines={m.uri: m for m in machines},
            masters=picker.masters,
            environ=environ,
        )
    )
    try:
        return _plan_and_run(args, options, targets, drvs, picker, sessions, environ, console)
    finally:
        sessions.close()
        picker.close()


def _plan_and_run(  # noqa: PLR0917 - the steps of one build, in order
    args: BuildArgs,
    options: RunOptions,
    targets: Sequence[Target],
    drvs: Mapping[str, Derivation],
    picker: MachinePicker,
    sessions: Sessions,
    environ: Mapping[str, str],
    console: Console,
) -> BuildOutcome:
    places = Places()
    valid = _look_here(drvs, places, sessions)
    roots = [(t.drv_path, t.outputs) for t in targets]
    speeds = {m.uri: m.speed_factor for m in picker.machines}
    known = Estimates(picker.advice(lambda db: db.build_times(), []), lambda m: speeds.get(m, 1))
    graph = plan(drvs, roots, valid=valid, estimate=known)
    _refuse_floating(graph, drvs)
    console.planned(len(graph), len(picker.machines), _bound(graph, picker.machines))
    run = Run(
        graph=graph,
        drvs=drvs,
        roots=frozenset(t.drv_path for t in targets),
        picker=picker,
        places=places,
        sessions=sessions,
        store=DEFAULT_LOCAL_STORE,
        environ=environ,
        console=console,
        options=options,
    )
    console.begin(picker.machines, options.local_jobs)
    try:
        report = run.execute()
    finally:
        console.end()
    outputs = target_outputs(targets, drvs)
    wanted = [path for _, _, path in outputs]
    if args.fetch_all:
        wanted += [StorePath.parse(o.path) for d in graph.nodes() for o in drvs[d].outputs.values()]
    if report.failed or report.cannot_build:
        # What was built of what was asked for comes here all the same (as after nix-build
        # --keep-going, whose built outputs are valid); no result links.
        fetch_here([p for p in wanted if places.where(p)], places=places, sessions=sessions)
        return BuildOutcome(status=_failed_status(report), report=report)
    fetched = fetch_here(wanted, places=places, sessions=sessions)
    if args.out_link is not None:
        names = out_link_names(outputs, args.out_link)
        add_roots([(n, p) for n, (_, _, p) in zip(names, outputs, strict=True)], environ)
    return BuildOutcome(
        status=0,
        outputs=tuple((t.drv_path, name, str(path)) for t, name, path in outputs),
        report=report,
        fetched_bytes=fetched,
    )


def _look_here(drvs: Mapping[str, Derivation], places: Places, sessions: Sessions) -> set[str]:
    """The outputs valid here; the infos of those and of every source, as places `HERE`."""
    outputs = {StorePath.parse(o.path) for d in drvs.values() for o in d.outputs.values() if o.path}
    sources = {StorePath.parse(p) for d in drvs.values() for p in d.input_srcs}
    sources |= {StorePath.parse(p) for p in drvs}  # for builders that build by path
    session = sessions.take(HERE)
    try:
        valid = session.query_valid_paths(outputs)
        infos = session.query_path_infos(session.query_closure(valid | sources))
    except BaseException:
        sessions.discard(session)
        raise
    sessions.give_back(HERE, session)
    places.add(infos.values(), HERE)
    return {str(p) for p in valid}


def _substitute(targets: Sequence[Target], environ: Mapping[str, str], console: Console) -> None:
    """Fetch here what Nix's substituters have (`engine.substitutes`), so it is not built."""
    paths = substitutes.to_fetch([t.drv_path for t in targets], environ)
    if not paths:
        return
    console.log(Verbosity.INFO, f"fetching {len(paths)} paths from the substituters")
    if (error := substitutes.fetch_here(paths, environ)) is not None:
        console.warn(f"could not fetch from the substituters; building instead: {error}")


def _refuse_floating(graph: BuildGraph, drvs: Mapping[str, Derivation]) -> None:
    """Outputs whose paths are known only once built (floating content-addressed, impure)
    cannot be planned yet: say so before anything starts."""
    for drv_path in graph.nodes():
        unknown = sorted(name for name, o in drvs[drv_path].outputs.items() if not o.path)
        if unknown:
            raise NixdistError(
                f"{drv_path}: output {', '.join(unknown)} has no path known in advance "
                "(a floating content-addressed derivation), which nixdist cannot build yet: "
                "build it with nix-build"
            )


def _failed_status(report: RunReport) -> int:
    """nix-build's exit status for a run with failures: 101 when a build timed out, 100 when
    a build failed, 1 when none ran and failed (nothing could take one)."""
    if report.timed_out:
        return EXIT_TIMED_OUT
    if any(failed.place for failed in report.failed):
        return EXIT_BUILD_FAILED
    return EXIT_OTHER


def _bound(graph: BuildGraph, machines: Sequence[Machine]) -> float:
    capacity = max(1, sum(m.max_jobs for m in machines))
    return graph.lower_bound(capacity) if len(graph) else 0.0
