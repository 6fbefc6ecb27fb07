"""One accepted derivation, built on a builder (nix-protocols.md §1.6-§1.9, design.md §3).

    inputs   local serve (1, 2, 3) ──NAR stream──▶ remote serve (1, 9)    under the upload lock
    build    remote serve 8 (BasicDerivation); the remote's stderr ──▶ fd 4, Nix's build log
    outputs  remote serve (7, 2, 3) ──NAR stream──▶ local serve (1, 9), NIX_HELD_LOCKS = outputs

The local store is reached through a ``nix-store --serve --write`` child started with
``NIX_HELD_LOCKS`` set to the derivation's outputs: Nix holds their locks for the whole build,
and importing them otherwise deadlocks. Nothing is ever written to a store except through
``AddToStoreNar``, which the receiving Nix checks against the NAR hash and registers
atomically: an interrupted copy leaves no partial or unregistered path.

Exit status: 0 only when every output is valid locally (otherwise Nix aborts the whole run),
100 when the build failed, 101 when it timed out, 1 for anything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.errors import BuildError
from nixdist.model.derivation import parse_derivation, to_basic
from nixdist.model.store_path import StorePath
from nixdist.protocol.hook import HookExit, exit_for_build_status
from nixdist.protocol.serve import BuildOptions
from nixdist.store.copy import copy_closure, copy_paths
from nixdist.store.serve import ServeStore

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.hook.output import HookOutput
    from nixdist.model.machines import Machine
    from nixdist.protocol.hook import AcceptedWork, HookSettings, TryRequest
    from nixdist.state.slots import SlotDirectory

#: Nix gives the hook the write end of the build-log pipe as fd 4.
BUILD_LOG_FD: Final = 4


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


def build_remotely(
    *,
    request: TryRequest,
    work: AcceptedWork,
    settings: HookSettings,
    machine: Machine,
    remote: ServeStore,
    slots: SlotDirectory,
    out: HookOutput,
    environ: Mapping[str, str],
) -> int:
    drv_path = StorePath.parse(request.drv_path)
    drv = parse_derivation(Path(request.drv_path).read_text(encoding="utf-8"))
    outputs = frozenset(StorePath.parse(o.path) for o in drv.outputs.values() if o.path)
    if len(outputs) != len(drv.outputs):
        raise BuildError(
            "outputs whose paths are not known in advance (floating content-addressed "
            "derivations) are not supported over ssh:// yet",
            drv_path=str(drv_path),
            machine=machine.uri,
        )
    local = ServeStore.open_local(
        store=settings.store, held_locks=sorted(map(str, outputs)), environ=environ
    )
    try:
        # From here on the remote's stderr (its build log) is this derivation's log.
        remote.channel.forward_stderr_to(BUILD_LOG_FD)
        with slots.upload_lock(machine) as upload:
            if not upload.acquired:
                out.warn(f"somebody is hogging the upload lock for '{machine.uri}', continuing...")
            sent = copy_paths(
                local,
                remote,
                map(StorePath.parse, work.inputs),
                substitute=settings.builders_use_substitutes,
            )
        out.debug(
            f"copied {len(sent.copied)} paths ({sent.nar_bytes} bytes) to '{machine.uri}', "
            f"{sent.already_valid} already there"
        )
        basic = to_basic(drv, str(drv_path), work.inputs)
        result = remote.build_derivation(drv_path, basic, build_options(settings))
        if not result.is_success:
            out.error(f"build of '{drv_path}' on '{machine.uri}' failed: {result.error_msg}")
            return exit_for_build_status(result.status)
        copy_closure(remote, local, outputs)  # only what is missing here moves
        return HookExit.OK
    finally:
        remote.close()
        local.close()
