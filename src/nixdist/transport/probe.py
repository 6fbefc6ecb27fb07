"""A builder's own report of its load, asked over its pooled ssh connection (design.md §6).

Nix counts only the slots its own clients hold, so several clients (or a builder's local
users) overload a builder. nixdist asks the builder itself, with one short command over the
control master that the builds use anyway (about 25 ms), and caches the answer for a few
seconds (`nixdist.state.db`, ``probes``). The builder needs nothing of ours: the command is a
POSIX shell script with one ``uname -s`` branch, using what each system has::

    nixdist-probe os <uname -s>
    nixdist-probe loadavg <1 min> …     Linux /proc/loadavg; macOS, BSD sysctl -n vm.loadavg
    nixdist-probe cores <n>             getconf _NPROCESSORS_ONLN; sysctl -n hw.ncpu
    nixdist-probe mem-bytes <n>         Linux MemAvailable; macOS vm_stat free + inactive +
                                        speculative pages; FreeBSD free + inactive pages
    nixdist-probe builds <n>            distinct build users (nixbld*, macOS _nixbld*) owning
                                        a process
    nixdist-probe df <fs> <1K-blocks> <used> <available> …   df -Pk /nix/store

Each line is tagged, so a shell that prints a banner on stdout does not confuse the parser.
Running builds are counted as the number of distinct build users that own a process: Nix runs
each build as its own build user. A builder without build users (single-user Nix) reports 0,
and the scheduler then relies on the slots held on this machine, as Nix does.

**The report is advice, never a verdict.** A builder is down only when it cannot be reached
(`probe_builder` raises `TransportError` only then). Whatever the probe cannot tell — a file
it may not read, a command a system lacks, a store directory that does not exist yet, a probe
that fails or is too slow — is ``None`` in the report, and the scheduler falls back on Nix's
own slot count for it, as ``build-remote`` does; `BuilderReport.problem` says why.

The command is a constant: nothing from a machines file or a derivation is ever put into it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import select
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import TransportError
from nixdist.transport.openssh import ssh_environment

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget

_TAG: Final = "nixdist-probe"
# awk programs: bytes of memory free for builds, from macOS's vm_stat and FreeBSD's sysctl
# ("%.0f": some awks' "%d" stops at 2^31).
_DARWIN_MEM: Final = (
    "/page size of/ {size = $8} /^Pages (free|inactive|speculative):/ {pages += $NF} "
    'END {if (size) printf "%.0f", pages * size}'
)
_BSD_MEM: Final = (
    'NR == 1 {size = $1} NR > 1 {pages += $1} END {if (size) printf "%.0f", pages * size}'
)
_BSD_PAGES: Final = "hw.pagesize vm.stats.vm.v_free_count vm.stats.vm.v_inactive_count"
PROBE_SCRIPT: Final = (
    """\
t=TAG
os=$(uname -s 2>/dev/null)
echo "$t os $os"
case $os in
Linux)
  echo "$t loadavg $(cat /proc/loadavg 2>/dev/null)"
  echo "$t cores $(getconf _NPROCESSORS_ONLN 2>/dev/null)"
  echo "$t mem-bytes $(awk '/^MemAvailable:/ {printf "%.0f", $2 * 1024}' /proc/meminfo 2>/dev/null)"
  echo "$t builds $(stat -c %U /proc/[0-9]* 2>/dev/null | grep '^nixbld' | sort -u | wc -l)"
  ;;
Darwin)
  echo "$t loadavg $(sysctl -n vm.loadavg 2>/dev/null)"
  echo "$t cores $(sysctl -n hw.ncpu 2>/dev/null)"
  echo "$t mem-bytes $(vm_stat 2>/dev/null | awk 'DARWIN_MEM')"
  echo "$t builds $(ps -A -o user= 2>/dev/null | grep '^_nixbld' | sort -u | wc -l)"
  ;;
*BSD|DragonFly)
  echo "$t loadavg $(sysctl -n vm.loadavg 2>/dev/null)"
  echo "$t cores $(sysctl -n hw.ncpu 2>/dev/null)"
  echo "$t mem-bytes $(sysctl -n BSD_PAGES 2>/dev/null | awk 'BSD_MEM')"
  echo "$t builds $(ps -A -o user= 2>/dev/null | grep '^nixbld' | sort -u | wc -l)"
  ;;
esac
echo "$t df $(df -Pk /nix/store 2>/dev/null | tail -n 1)"
""".replace("TAG", _TAG)
    .replace("DARWIN_MEM", _DARWIN_MEM)
    .replace("BSD_PAGES", _BSD_PAGES)
    .replace("BSD_MEM", _BSD_MEM)
)
#: The most a probe may print; anything longer is not our script's output.
MAX_PROBE_OUTPUT: Final = 64 * 1024
#: ssh's exit status when it could not connect (anything else is the remote command's).
_SSH_FAILED: Final = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderReport:
    """What a builder said about itself; ``None`` for whatever it did not tell."""

    os: str | None = None  # uname -s
    running_builds: int | None = None
    load1: float | None = None  # 1-minute load average
    cores: int | None = None
    disk_free: int | None = None  # bytes available on the store's file system
    disk_total: int | None = None
    mem_available: int | None = None  # bytes
    #: Why (part of) the report is missing, in words; None when it is whole.
    problem: str | None = None

    @property
    def load_per_core(self) -> float | None:
        if self.load1 is None or self.cores is None:
            return None
        return self.load1 / max(1, self.cores)

    @property
    def known(self) -> bool:
        """Whether the report tells anything at all."""
        return any(
            v is not None
            for v in (self.running_builds, self.load1, self.disk_free, self.mem_available)
        )


def parse_report(text: str) -> BuilderReport:
    """The report in the output of `PROBE_SCRIPT`; lines without our tag are ignored, and so
    is every value that does not read as what it should be."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == _TAG:  # noqa: PLR2004 - tag and key
            fields[words[1]] = words[2:]
    df = fields.get("df", [])
    # <filesystem> <1024-blocks> <used> <available> <capacity> <mounted on>; the name of the
    # file system may contain spaces, so count from the end.
    disk_total = _count(df[-5]) if len(df) >= 6 else None  # noqa: PLR2004
    disk_free = _count(df[-3]) if len(df) >= 6 else None  # noqa: PLR2004
    os_name = fields.get("os", [])
    report = BuilderReport(
        os=" ".join(os_name) or None,
        running_builds=_count(_first(fields, "builds")),
        load1=_load(fields.get("loadavg", [])),
        cores=_count(_first(fields, "cores")),
        disk_free=None if disk_free is None else disk_free * 1024,
        disk_total=None if disk_total is None else disk_total * 1024,
        mem_available=_count(_first(fields, "mem-bytes")),
    )
    missing = [
        name
        for name, value in (
            ("running builds", report.running_builds),
            ("load", report.load1),
            ("cores", report.cores),
            ("free disk", report.disk_free),
            ("free memory", report.mem_available),
        )
        if value is None
    ]
    if not missing:
        return report
    if not report.known:
        said = text.strip()[:200]
        problem = f"its answer told nothing we understand: {said!r}" if said else "no answer"
    else:
        problem = "it did not tell its " + ", ".join(missing)
    return dataclasses.replace(report, problem=problem)


def _first(fields: dict[str, list[str]], key: str) -> str | None:
    values = fields.get(key)
    return values[0] if values else None


def _count(text: str | None) -> int | None:
    """A non-negative decimal integer, or None."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _load(words: list[str]) -> float | None:
    """The 1-minute load from ``0.52 0.58 0.59 1/123 456`` or ``{ 0.52 0.58 0.59 }``."""
    for word in words:
        if word == "{":
            continue
        try:
            value = float(word)
        except ValueError:
            return None
        return value if math.isfinite(value) and value >= 0 else None
    return None


def probe_builder(
    target: SshTarget, masters: ControlMasters, environ: Mapping[str, str]
) -> BuilderReport:
    """Ask `target` for its report over its control master (started if needed).

    Raises `TransportError` only when the builder cannot be reached; a probe that fails, is
    too slow or says nothing we understand gives a report of unknowns with its `problem`.
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
    except TimeoutError:
        return BuilderReport(problem=f"the load probe did not finish within {timeout:g} seconds")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    said = err_text.decode(errors="replace").strip().splitlines()
    if proc.returncode == _SSH_FAILED:
        raise TransportError(f"cannot reach '{target.host}': {said[-1] if said else 'ssh failed'}")
    report = parse_report(out.decode(errors="replace"))
    if proc.returncode != 0 and report.problem is not None:
        why = said[-1] if said else f"exit status {proc.returncode}"
        return dataclasses.replace(report, problem=f"{report.problem} (the probe failed: {why})")
    return report


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
