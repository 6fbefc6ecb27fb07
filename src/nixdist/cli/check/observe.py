"""`nixdist check`'s I/O: talking to each builder over a fresh ssh master (in parallel
threads, so a dead builder costs one timeout) and gathering this host's Nix settings; the
verdicts are `nixdist.cli.check.verdicts`'s."""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import posixpath
import pwd
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.cli.check.local import LocalFacts, local_findings
from nixdist.cli.check.ssh import Reach
from nixdist.cli.check.verdicts import (
    BuilderReport,
    CheckReport,
    Observed,
    assess_builder,
    unusable,
)
from nixdist.errors import ConfigError, ProtocolError, StoreRefusedError, TransportError
from nixdist.hook.picker import SUPPORTED_SCHEMES
from nixdist.model import nixbase32
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.machines import decode_host_key
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.protocol import serve
from nixdist.state.config import (
    NixView,
    effective_build_hook,
    host_system,
    nix_view,
    read_machines_file,
)
from nixdist.state.slots import default_current_load_dir
from nixdist.store.remote import RemoteStore, open_remote
from nixdist.transport.check_script import run_check_script
from nixdist.transport.openssh import ControlMasters, target_for_machine
from nixdist.transport.remote_script import ScriptOutput
from nixdist.wire.nar import Contents, Regular, encode_nar
from nixdist.wire.primitives import encode_u64

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from nixdist.model.machines import Machine
    from nixdist.model.nixconf import NixConf
    from nixdist.transport.openssh import SshTarget

DEFAULT_TIMEOUT_S: Final = 10.0
WRITE_TEST_NAME: Final = "nixdist-check-write-test"
_MASTER_PERSIST_S: Final = 60  # a master orphaned by a killed check ends on its own

# ---------------------------------------------------------------------------------------
# Talking to a builder (I/O)


@contextlib.contextmanager
def _watchdog(store: RemoteStore, seconds: float) -> Iterator[threading.Event]:
    """Kill `store`'s session when the block lasts longer than `seconds`; the event says so."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        store.abort()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def write_test_path(store_dir: str = STORE_DIR) -> tuple[PathInfo, bytes]:
    """A new unsigned input-addressed path of one small file, like an input the hook sends."""
    data = b"written by nixdist check, and deleted right after\n"
    nar = b"".join(
        encode_nar([Regular(path=(), executable=False, size=len(data)), Contents(data=data)])
    )
    basename = f"{nixbase32.encode(os.urandom(20))}-{WRITE_TEST_NAME}"
    info = PathInfo(
        path=StorePath.from_basename(basename, store_dir),
        deriver=None,
        nar_hash=Hash.of(HashAlgo.SHA256, nar),
        references=frozenset(),
        nar_size=len(nar),
    )
    return info, nar


def _serve_session(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str], timeout: float
) -> tuple[Observed, str | None]:
    """The handshake and the write test; also the test path to delete, if it was added."""
    started = time.monotonic()
    try:
        store = open_remote(target, masters, environ)
    except serve.ServeGreetingError as err:
        daemon = err.received.startswith(encode_u64(serve.WORKER_MAGIC_2))
        return Observed(
            serve_error=str(err), noisy_greeting=bool(err.received) and not daemon
        ), None
    except (TransportError, ProtocolError) as err:
        return Observed(serve_error=str(err)), None
    handshake_ms = round((time.monotonic() - started) * 1000, 1)
    info, nar = write_test_path(store.store_dir)
    error: str | None = None
    try:
        with _watchdog(store, timeout) as fired:
            try:
                store.add_nar(info, [nar])
            except (TransportError, ProtocolError, StoreRefusedError) as err:
                error = f"no answer within {timeout:g} s" if fired.is_set() else str(err)
    finally:
        store.close()
    observed = Observed(
        handshake_ms=handshake_ms,
        serve_protocol=serve.format_version(store.version),  # 2.x serve, 1.x daemon
        write_tried=True,
        write_error=error,
    )
    return observed, None if error else str(info.path)


def _ask_shell(
    target: SshTarget,
    masters: ControlMasters,
    environ: Mapping[str, str],
    *,
    timeout: float,
    delete: str | None,
) -> ScriptOutput:
    """The check script's answer; a builder that cannot be reached is an answer's error."""
    try:
        return run_check_script(target, masters, environ, timeout=timeout, delete=delete)
    except (TransportError, ConfigError) as err:
        return ScriptOutput(error=str(err))


def observe_builder(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str], *, timeout: float
) -> Observed:
    """Connect to one builder and run the builder-side checks. A fault of the builder is
    in the result, never raised."""
    started = time.monotonic()
    try:
        masters.ensure_master(target, environ)
    except (TransportError, ConfigError) as err:
        return Observed(connect_error=str(err))
    connect_ms = round((time.monotonic() - started) * 1000, 1)
    try:
        observed, added = _serve_session(target, masters, environ, timeout)
        probe = _ask_shell(target, masters, environ, timeout=timeout, delete=added)
    finally:
        masters.stop_master(target)
    return dataclasses.replace(observed, connect_ms=connect_ms, probe=probe)


def _target(machine: Machine, environ: Mapping[str, str]) -> SshTarget | BuilderReport:
    """The ssh target of `machine`, or the report on a machine that cannot be tried."""
    if machine.scheme not in SUPPORTED_SCHEMES:
        message = (
            f"nixdist cannot build on {machine.scheme}:// stores; the hook skips {machine.uri}"
        )
        return unusable(machine, Reach.UNSUPPORTED, message, "Use an ssh:// or ssh-ng:// URI.")
    try:
        target = target_for_machine(machine, environ)
        decode_host_key(target.public_host_key or "").decode()
    except (ConfigError, ValueError, UnicodeDecodeError) as err:
        return unusable(machine, Reach.BAD_LINE, f"bad machines line: {err}")
    return target


def check_builders(
    machines: Sequence[Machine], environ: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT_S
) -> tuple[BuilderReport, ...]:
    """Every check on every machine (see the module docstring), in the machines' order.

    Builders are contacted in parallel, each through a fresh ssh master in a private temporary
    directory. A builder on several lines (same ssh target) is contacted once, and each line
    judged on its own (its claimed systems and features differ).
    """
    targets = [_target(machine, environ) for machine in machines]
    unique = list(dict.fromkeys(t for t in targets if not isinstance(t, BuilderReport)))
    observed: dict[SshTarget, Observed] = {}
    if unique:
        with tempfile.TemporaryDirectory(prefix="nixdist-check-") as tmp:
            masters = ControlMasters(
                Path(tmp), persist_s=_MASTER_PERSIST_S, connect_timeout_s=timeout
            )
            with ThreadPoolExecutor(max_workers=min(32, len(unique))) as pool:
                futures = [
                    pool.submit(observe_builder, t, masters, environ, timeout=timeout)
                    for t in unique
                ]
                observed = {t: f.result() for t, f in zip(unique, futures, strict=True)}
    return tuple(
        target
        if isinstance(target, BuilderReport)
        else assess_builder(machine, target.host, observed[target], timeout=timeout)
        for machine, target in zip(machines, targets, strict=True)
    )


# ---------------------------------------------------------------------------------------
# Gathering the facts of this host, with I/O


def _uses_daemon(environ: Mapping[str, str], conf: NixConf) -> bool:
    """Builds go through a nix-daemon (which runs the hook as root), as Nix 2.8 decides."""
    store = environ.get("NIX_REMOTE") or conf.get("store", "auto")
    if store == "daemon" or store.startswith("unix://"):
        return True
    state = environ.get("NIX_STATE_DIR") or "/nix/var/nix"
    socket = Path(state, "daemon-socket", "socket")
    return store == "auto" and not os.access(state, os.W_OK) and socket.exists()


def _writable_dir(path: Path) -> bool:
    """A writable directory, or missing under a writable parent (Nix creates it)."""
    if path.is_dir():
        return os.access(path, os.W_OK | os.X_OK)
    return not path.exists() and os.access(path.parent, os.W_OK | os.X_OK)


def gather_local_facts(
    environ: Mapping[str, str],
    view: NixView | None,
    *,
    view_error: str = "",
    machines_file: str | None = None,
) -> LocalFacts:
    """`LocalFacts` of this host. `view` is None when Nix's configuration could not be read
    (`view_error` says why)."""
    conf = view.conf if view is not None else None
    hook = conf.get("build-hook", "") if conf is not None else ""
    origin = conf.origins.get("build-hook") if conf is not None else None
    program = (hook.split() or [""])[0]
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    groups = set()
    for gid in os.getgroups():
        with contextlib.suppress(KeyError):
            groups.add(grp.getgrgid(gid).gr_name)
    beside = Path(sys.executable).with_name("nixdist-hook")
    suggestion = str(beside) if beside.exists() else shutil.which("nixdist-hook")
    current_load = default_current_load_dir(environ=environ)
    return LocalFacts(
        build_hook=hook,
        build_hook_origin=f"{origin[0]}:{origin[1]}" if origin else "",
        effective_build_hook=effective_build_hook(environ) if hook else None,
        build_hook_runnable=posixpath.isabs(program) and os.access(program, os.X_OK),
        hook_suggestion=suggestion or "/path/to/nixdist-hook",
        builders_origin=view.origin if view is not None else "",
        builders_count=len(view.machines) if view is not None else None,
        builders_error=view_error,
        machines_file=machines_file,
        current_load=str(current_load),
        current_load_writable=_writable_dir(current_load),
        user=user,
        is_root=uid == 0,
        groups=frozenset(groups),
        trusted_users=tuple(conf.get("trusted-users", "root").split()) if conf else ("root",),
        uses_daemon=conf is not None and _uses_daemon(environ, conf),
    )


def run_check(
    environ: Mapping[str, str],
    *,
    machines_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> CheckReport:
    """`nixdist check`: this host, then every builder of `machines_file` (default: the
    machines Nix would use). ConfigError when the machines cannot be read."""
    view: NixView | None = None
    view_error = ""
    try:
        view = nix_view(environ)
    except ConfigError as err:
        if machines_file is None:
            raise
        view_error = str(err)
    if machines_file is not None:
        system = view.system if view is not None else host_system()
        machines, origin = read_machines_file(machines_file, default_system=system), machines_file
    elif view is not None:
        machines, origin = view.machines, view.origin
    facts = gather_local_facts(environ, view, view_error=view_error, machines_file=machines_file)
    return CheckReport(
        machines_origin=origin,
        local=local_findings(facts),
        builders=check_builders(machines, environ, timeout=timeout),
    )
