"""One accepted derivation, built on a builder (nix-protocols.md §1.6-§1.9, design.md §3).

    inputs   local serve (1, 2, 3) ──NAR stream──▶ remote serve (1, 9)    path by path, claimed
    build    remote serve 8 (BasicDerivation); the remote's stderr ──▶ fd 4, Nix's build log
    outputs  remote serve (7, 2, 3) ──NAR stream──▶ staged, checked, moved in place and
             registered (`nixdist.store.outputs`: Nix holds the outputs' locks)

The local store is the one Nix builds in (its ``store`` setting: the default store or a chroot
store), reached through a local ``nix-store --serve --write`` child for reading and uploading
the inputs; the ``.drv`` is read at its real path in that store. Inputs reach the builder
through ``AddToStoreNar``, which the builder checks against the NAR hash and registers
atomically; the outputs come back into the local store whole or not at all
(`nixdist.store.outputs`): an interrupted copy leaves no partial or unregistered path.

Uploads take no per-builder lock (``build-remote`` does, NixOS/nix#11083): every hook sending
inputs to one builder claims them path by path (`nixdist.store.claims`, files under
``<state dir>/uploads/<builder>/``), so uploads of different paths run side by side and a path
two builds need is sent once.

Exit status: 0 only when every output is valid locally (otherwise Nix aborts the whole run),
100 when the build failed, 101 when it timed out, 1 for anything else.

**Failover.** When the builder fails under the build — the connection is lost, the builder
crashes or stops answering (ssh keep-alives), its store breaks the protocol — during the
upload, the build or the download, the attempt is recorded as lost, the builder is marked down
(`MachinePicker.mark_down`) and the build starts again on the next best builder
(`MachinePicker.pick_again`), up to the ``max-attempts`` setting's number of builders in all;
the attempt loop is here and only here (the picker only chooses). Then it fails with a
message naming each builder tried and why. Which side failed is known from the error's `peer`
(set by `ServeStore`): only the builder's failures move the build, never the local store's,
and a build that the builder ran and reported as failed is never retried — that is the
derivation failing (exit 100; build-remote exits 1, which Nix 2.29+ does not tell apart), nor
is a store's refusal (`StoreRefusedError`: it does not trust us), which no other builder's
attempt would explain better. The outputs are registered together at the
end of the download, so a builder lost before that leaves none of them; the next builder's
outputs are all imported.

Every attempt is a row in the history (`nixdist.state.history`): its phase as it goes, and the
time, bytes and paths of the upload, build and download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from nixdist.errors import BuildError, LocalProtocolError, NixdistError, StoreRefusedError
from nixdist.hook.progress import LOCAL_STORE, CopyActivities, RemoteLog
from nixdist.model.derivation import parse_derivation, to_basic
from nixdist.model.store_path import StorePath
from nixdist.protocol.hook import HookExit
from nixdist.protocol.serve import BuildOptions, BuildStatus
from nixdist.state.paths import uploads_dir
from nixdist.state.rows import Outcome, Phase
from nixdist.store.claims import UploadClaims
from nixdist.store.copy import copy_closure, copy_paths
from nixdist.store.daemon import DaemonStore
from nixdist.store.outputs import OutputImport
from nixdist.store.serve import ServeStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nixdist.hook.output import HookOutput
    from nixdist.hook.picked import Picked
    from nixdist.model.derivation import Derivation
    from nixdist.model.local_store import LocalStore
    from nixdist.model.machines import Machine
    from nixdist.model.request import BuildRequest
    from nixdist.protocol.hook import AcceptedWork, HookSettings
    from nixdist.protocol.serve import BuildResult
    from nixdist.settings import Settings
    from nixdist.state.history import BuildRecord, History
    from nixdist.store.copy import CopyReport

#: Nix gives the hook the write end of the build-log pipe as fd 4.
BUILD_LOG_FD: Final = 4


class Picker(Protocol):
    """What the attempt loop needs of `nixdist.hook.picker.MachinePicker`: its settings and
    history, and another builder when one fails."""

    @property
    def config(self) -> Settings: ...

    @property
    def history(self) -> History: ...

    def mark_down(self, machine: Machine, reason: str) -> None: ...

    def pick_again(self, request: BuildRequest) -> Picked | None: ...


class _BuilderLost(Exception):  # noqa: N818 - an outcome, not an error of ours
    """The builder (not the build) failed during `phase`."""

    def __init__(self, phase: Phase, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason


_EXIT_FOR_STATUS: Final[dict[BuildStatus, HookExit]] = {
    BuildStatus.PERMANENT_FAILURE: HookExit.BUILD_FAILED,
    # Nix turns exit 100 into TransientFailure itself for fixed-output derivations
    BuildStatus.TRANSIENT_FAILURE: HookExit.BUILD_FAILED,
    BuildStatus.TIMED_OUT: HookExit.TIMED_OUT,
}


def exit_for_build_status(status: BuildStatus) -> HookExit:
    """How the hook exits after a remote build with `status` (nix-protocols.md §1.8, §3.7).

    A success maps to `HookExit.OK`, which is only right once every wanted output is valid
    locally; failures Nix has no exit status for (log limit, misc, …) map to `FAILED`.
    """
    if status.is_success:
        return HookExit.OK
    return _EXIT_FOR_STATUS.get(status, HookExit.FAILED)


def build_options(settings: HookSettings) -> BuildOptions:
    """The local settings the remote build must honour (build-remote forwards the same)."""
    return BuildOptions(
        max_silent_time=settings.max_silent_time,
        build_timeout=settings.timeout,
        max_log_size=settings.max_build_log_size,
        nr_repeats=settings.repeat,
        enforce_determinism=settings.enforce_determinism,
        keep_failed=settings.keep_failed,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """What every attempt of one build shares."""

    drv_path: StorePath
    drv: Derivation
    store: LocalStore
    outputs: frozenset[StorePath]
    work: AcceptedWork
    settings: HookSettings
    out: HookOutput
    environ: Mapping[str, str]
    state: Path  # nixdist's state directory
    open_local: Callable[[LocalStore, Mapping[str, str]], ServeStore]

    @classmethod
    def read(
        cls,
        *,
        request: BuildRequest,
        work: AcceptedWork,
        settings: HookSettings,
        store: LocalStore,
        out: HookOutput,
        environ: Mapping[str, str],
        state: Path,
        open_local: Callable[[LocalStore, Mapping[str, str]], ServeStore],
    ) -> _Job:
        """The job of `request`, its derivation read at its real path in `store`."""
        drv_path = StorePath.parse(request.drv_path)
        drv = parse_derivation(Path(store.real_path(drv_path)).read_text(encoding="utf-8"))
        return cls(
            drv_path=drv_path,
            drv=drv,
            store=store,
            outputs=frozenset(StorePath.parse(o.path) for o in drv.outputs.values() if o.path),
            work=work,
            settings=settings,
            out=out,
            environ=environ,
            state=state,
            open_local=open_local,
        )


def build_remotely(
    *,
    request: BuildRequest,
    work: AcceptedWork,
    settings: HookSettings,
    store: LocalStore,
    first: Picked,
    picker: Picker,
    out: HookOutput,
    environ: Mapping[str, str],
    open_local: Callable[[LocalStore, Mapping[str, str]], ServeStore] = ServeStore.open_local,
) -> int:
    """Build the accepted derivation on `first`, failing over to other builders if they fail.

    `open_local` opens the session with the local store for each attempt (a seam for tests)."""
    job = _Job.read(
        request=request,
        work=work,
        settings=settings,
        store=store,
        out=out,
        environ=environ,
        state=picker.config.state_dir,
        open_local=open_local,
    )
    if len(job.outputs) != len(job.drv.outputs):
        first.remote.close()
        raise BuildError(
            "outputs whose paths are not known in advance (floating content-addressed "
            "derivations) are not supported over ssh:// yet",
            drv_path=str(job.drv_path),
            machine=first.machine.uri,
        )
    picker.history.prune_if_due(keep_days=picker.config.history_days)
    tried: list[str] = []
    picked = first
    attempt = 1
    while True:
        record = picker.history.start_build(
            drv_path=str(job.drv_path), machine=picked.machine.uri, attempt=attempt
        )
        try:
            return _attempt(job, picked, record)
        except _BuilderLost as lost:
            what = f"'{picked.machine.uri}' failed during {lost.phase}: {lost.reason}"
            tried.append(what)
            picker.mark_down(picked.machine, f"lost during {lost.phase}: {lost.reason}")
            picked.lease.release()
        if attempt >= picker.config.max_attempts:
            why = f"gave up after {attempt} builders"
            break
        out.warn(f"{what}; building '{job.drv_path}' on another builder")
        again = picker.pick_again(request)
        if again is None:
            why = "no other builder can take it"
            break
        picked = again
        attempt += 1
    out.error(f"cannot build '{job.drv_path}' remotely ({why}): " + "; ".join(tried))
    return HookExit.FAILED


def _attempt(job: _Job, picked: Picked, record: BuildRecord) -> int:
    """One attempt on `picked`; raises `_BuilderLost` when the builder fails under it."""
    remote = picked.remote
    machine = picked.machine
    local: ServeStore | None = None
    finished = False
    try:
        local = job.open_local(job.store, job.environ)
        # From here on the remote's stderr (its build log) is this derivation's log; a
        # daemon's log stream goes to Nix as the hook's own (its build lines to the log).
        remote.forward_log(BUILD_LOG_FD, RemoteLog(job.out, BUILD_LOG_FD))
        record.enter(Phase.UPLOAD)
        sent = _upload(job, local, picked)
        record.note(
            upload_s=record.elapsed(), upload_bytes=sent.nar_bytes, upload_paths=len(sent.copied)
        )
        job.out.debug(
            f"copied {len(sent.copied)} paths ({sent.nar_bytes} bytes) to '{machine.uri}', "
            f"{sent.already_valid} already there"
        )
        record.enter(Phase.BUILD)
        result = _build(job, local, picked)
        record.note(build_s=record.elapsed())
        if not result.is_success:
            _build_failed(job, machine, result, record)
            finished = True
            return exit_for_build_status(result.status)
        record.enter(Phase.DOWNLOAD)
        got = _download(job, local, picked)
        record.note(
            download_s=record.elapsed(),
            download_bytes=got.nar_bytes,
            download_paths=len(got.copied),
        )
        record.finish(Outcome.BUILT)
        finished = True
    except NixdistError as err:
        if err.peer == remote.name and not isinstance(err, LocalProtocolError | StoreRefusedError):
            record.finish(Outcome.LOST, error=f"{record.phase}: {err}")
            raise _BuilderLost(record.phase, str(err)) from err
        record.finish(Outcome.ERROR, error=str(err))
        raise
    except BaseException as err:
        record.finish(Outcome.INTERRUPTED, error=f"{type(err).__name__}: {err}")
        raise
    finally:
        # After a failure either side may be mid-command: end both at once, never wait.
        for store in (remote, local):
            if store is None:
                continue
            if finished:
                store.close()
            else:
                store.abort()
    return HookExit.OK


def _build_failed(job: _Job, machine: Machine, result: BuildResult, record: BuildRecord) -> None:
    """The builder ran the build and it failed: that is the derivation's failure (no failover)."""
    timed_out = result.status is BuildStatus.TIMED_OUT
    record.finish(Outcome.TIMED_OUT if timed_out else Outcome.FAILED, error=result.error_msg)
    if job.settings.keep_failed:
        job.out.warn(_kept_failed_note(job))
    job.out.error(f"build of '{job.drv_path}' on '{machine.uri}' failed: {result.error_msg}")


def _build(job: _Job, local: ServeStore, picked: Picked) -> BuildResult:
    """Run the build on the builder: the derivation as a `BasicDerivation`, as Nix's hook
    does, or — for a daemon that does not trust us, which builds only content-addressed ones
    that way — the ``.drv``'s closure copied over and the derivation built by its path (what
    Nix's own hook does there since 2.18)."""
    remote = picked.remote
    if isinstance(remote, DaemonStore) and not remote.trusted and not job.drv.is_fixed_output:
        shown = CopyActivities(job.out, source=LOCAL_STORE, destination=picked.machine.uri)
        try:
            copy_closure(local, remote, [job.drv_path], progress=shown)
        finally:
            shown.close()
        results = remote.build_paths([job.drv_path])
        if job.drv_path not in results:
            raise StoreRefusedError(f"'{remote.name}' returned no result for {job.drv_path}")
        return results[job.drv_path]
    basic = to_basic(job.drv, str(job.drv_path), job.work.inputs)
    return remote.build_derivation(job.drv_path, basic, build_options(job.settings))


def _kept_failed_note(job: _Job) -> str:
    """What Nix's own hook (2.30+) says after a failed build with ``--keep-failed``."""
    note = "The failed build directory was kept on the remote builder due to `--keep-failed`."
    settings = job.settings
    if job.drv.platform == settings.system or job.drv.platform in settings.extra_platforms:
        note += (
            " You can re-run the command with `--builders ''` to disable remote building"
            " for this invocation."
        )
    return note


def _upload(job: _Job, local: ServeStore, picked: Picked) -> CopyReport:
    """The inputs the builder lacks, claimed path by path against other hooks' uploads."""
    uri = picked.machine.uri
    claims = UploadClaims(uploads_dir(job.state, uri))
    shown = CopyActivities(job.out, source=LOCAL_STORE, destination=uri)
    try:
        sent = copy_paths(
            local,
            picked.remote,
            map(StorePath.parse, job.work.inputs),
            substitute=job.settings.builders_use_substitutes,
            progress=shown,
            claims=claims,
        )
    finally:
        shown.close()
    claims.prune()
    return sent


def _download(job: _Job, local: ServeStore, picked: Picked) -> CopyReport:
    """The outputs' closure, as far as it is missing here."""
    shown = CopyActivities(job.out, source=picked.machine.uri, destination=LOCAL_STORE)
    into = OutputImport(
        local, job.store, job.outputs, source=picked.remote.name, environ=job.environ
    )
    try:
        got = copy_closure(picked.remote, into, job.outputs, progress=shown)
        into.commit()
    finally:
        into.discard()
        shown.close()
    return got
