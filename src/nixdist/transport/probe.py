"""A builder's own report of its load, asked over its pooled ssh connection (design.md §6).

Nix counts only the slots its own clients hold, so several clients (or a builder's local
users) overload a builder. nixdist asks the builder itself, with one short command over the
control master that the builds use anyway (about 25 ms), and caches the answer for a few
seconds (`nixdist.state.db`, ``probes``). The builder needs nothing of ours: the command uses
only a POSIX shell, coreutils and /proc::

    nixdist-probe loadavg <1 min> …     /proc/loadavg
    nixdist-probe cores <n>             getconf _NPROCESSORS_ONLN
    nixdist-probe df <fs> <1K-blocks> <used> <available> …   df -Pk /nix/store
    nixdist-probe mem MemAvailable: <kB> kB
    nixdist-probe builds <n>            distinct nixbld* users owning a process

Each line is tagged, so a shell that prints a banner on stdout does not confuse the parser.
Running builds are counted as the number of distinct build users (``nixbld*``, Nix's default
``build-users-group``) that own a process: Nix runs each build as its own build user. A builder
without build users (single-user Nix) reports 0, and the scheduler then relies on the slots
held on this machine, as Nix does.

The command is a constant: nothing from a machines file or a derivation is ever put into it.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import RemoteProtocolError, TransportError, TransportTimeoutError
from nixdist.transport.openssh import ssh_environment

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget

_TAG: Final = "nixdist-probe"
PROBE_SCRIPT: Final = "; ".join(
    [
        f'echo "{_TAG} loadavg $(cat /proc/loadavg)"',
        f'echo "{_TAG} cores $(getconf _NPROCESSORS_ONLN)"',
        f'echo "{_TAG} df $(df -Pk /nix/store | tail -n 1)"',
        f'echo "{_TAG} mem $(grep MemAvailable: /proc/meminfo)"',
        (
            f'echo "{_TAG} builds $(stat -c %U /proc/[0-9]* 2>/dev/null | grep "^nixbld" '
            '| sort -u | wc -l)"'
        ),
    ]
)
#: The most a probe may print; anything longer is not our script's output.
MAX_PROBE_OUTPUT: Final = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderReport:
    """What a builder said about itself."""

    running_builds: int
    load1: float  # 1-minute load average
    cores: int
    disk_free: int  # bytes available on the store's file system
    disk_total: int
    mem_available: int  # bytes

    @property
    def load_per_core(self) -> float:
        return self.load1 / max(1, self.cores)


def parse_report(text: str, *, host: str = "builder") -> BuilderReport:
    """The report in the output of `PROBE_SCRIPT`; lines without our tag are ignored."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == _TAG:  # noqa: PLR2004 - tag and key
            fields[words[1]] = words[2:]
    try:
        load1 = float(fields["loadavg"][0])
        cores = int(fields["cores"][0])
        df = fields["df"]
        # <filesystem> <1024-blocks> <used> <available> <capacity> <mounted on>; the name of
        # the file system may contain spaces, so count from the end.
        disk_total = int(df[-5]) * 1024
        disk_free = int(df[-3]) * 1024
        mem = fields["mem"]
        mem_available = int(mem[1]) * 1024
        running = int(fields["builds"][0])
    except (KeyError, IndexError, ValueError) as err:
        raise RemoteProtocolError(
            f"'{host}' answered the load probe with something unexpected: {text.strip()[:200]!r}"
        ) from err
    if min(load1, cores, disk_total, disk_free, mem_available, running) < 0:
        raise RemoteProtocolError(f"'{host}' reported negative numbers in its load probe")
    return BuilderReport(
        running_builds=running,
        load1=load1,
        cores=cores,
        disk_free=disk_free,
        disk_total=disk_total,
        mem_available=mem_available,
    )


def probe_builder(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str]
) -> BuilderReport:
    """Ask `target` for its report over its control master (started if needed).

    Raises TransportError when the builder cannot be reached or does not answer within the
    masters' connect timeout.
    """
    use_master = masters.ensure_master(target, environ)
    argv = masters.command_argv(target, PROBE_SCRIPT, use_master=use_master)
    timeout = masters.connect_timeout_s
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ssh_environment(environ),
        )
    except OSError as err:
        raise TransportError(f"cannot run ssh: {err}") from err
    try:
        out, err_text = _bounded_output(proc, timeout)
    except TimeoutError as err:
        raise TransportTimeoutError(
            f"'{target.host}' did not answer the load probe within {timeout:g} seconds"
        ) from err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        said = err_text.decode(errors="replace").strip().splitlines()
        raise TransportError(
            f"cannot probe '{target.host}': {said[-1] if said else f'exit {proc.returncode}'}"
        )
    return parse_report(out.decode(errors="replace"), host=target.host)


def _bounded_output(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """Stdout and stderr of `proc` until both close: at most `MAX_PROBE_OUTPUT` bytes each,
    within `timeout` seconds (TimeoutError otherwise)."""
    assert proc.stdout is not None  # noqa: S101 - Popen with PIPE guarantees them
    assert proc.stderr is not None  # noqa: S101
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    received = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = {out_fd, err_fd}
    deadline = time.monotonic() + timeout
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            buffer = received[fd]
            buffer += chunk[: MAX_PROBE_OUTPUT - len(buffer)]
            if not chunk or len(buffer) >= MAX_PROBE_OUTPUT:
                open_fds.discard(fd)
    proc.stdout.close()
    proc.stderr.close()
    return bytes(received[out_fd]), bytes(received[err_fd])
