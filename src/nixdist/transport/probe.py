"""A builder's own report of its load, asked over its pooled ssh connection (design.md §6).

Nix counts only the slots its own clients hold, so several clients (or a builder's local
users) overload a builder. nixdist asks the builder itself, with one short command over the
control master that the builds use anyway (about 25 ms), and caches the answer for a few
seconds (`nixdist.state.db`, ``probes``). The builder needs nothing of ours: the command is a
POSIX shell script with one ``uname -s`` branch, using what each system has, whose answers
are sections framed by marker lines (`nixdist.transport.remote_script`)::

    os        uname -s
    loadavg   <1 min> …          Linux /proc/loadavg; macOS, BSD sysctl -n vm.loadavg
    cores     <n>                getconf _NPROCESSORS_ONLN; sysctl -n hw.ncpu
    mem       <bytes>            Linux MemAvailable; macOS vm_stat free + inactive +
                                 speculative pages; FreeBSD free + inactive pages
    builds    <n>                distinct build users (nixbld*, macOS _nixbld*) owning a process
    df        df -Pk /nix/store  (`parse_df`, which ``nixdist check`` reads too)

The framing means a shell that prints a banner on stdout does not confuse the parser.
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
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import ParseError
from nixdist.model.store_path import STORE_DIR
from nixdist.transport.remote_script import frame, run_script

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget
    from nixdist.transport.remote_script import ScriptOutput

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
_LINUX_MEM: Final = """/^MemAvailable:/ {printf "%.0f", $2 * 1024}"""
# What each system's branch asks; each command's own errors are not part of its answer.
_BRANCHES: Final = (
    (
        "Linux",
        (
            ("loadavg", "cat /proc/loadavg 2>/dev/null"),
            ("cores", "getconf _NPROCESSORS_ONLN 2>/dev/null"),
            ("mem", f"awk '{_LINUX_MEM}' /proc/meminfo 2>/dev/null"),
            ("builds", "stat -c %U /proc/[0-9]* 2>/dev/null | grep '^nixbld' | sort -u | wc -l"),
        ),
    ),
    (
        "Darwin",
        (
            ("loadavg", "sysctl -n vm.loadavg 2>/dev/null"),
            ("cores", "sysctl -n hw.ncpu 2>/dev/null"),
            ("mem", f"vm_stat 2>/dev/null | awk '{_DARWIN_MEM}'"),
            ("builds", "ps -A -o user= 2>/dev/null | grep '^_nixbld' | sort -u | wc -l"),
        ),
    ),
    (
        "*BSD|DragonFly",
        (
            ("loadavg", "sysctl -n vm.loadavg 2>/dev/null"),
            ("cores", "sysctl -n hw.ncpu 2>/dev/null"),
            ("mem", f"sysctl -n {_BSD_PAGES} 2>/dev/null | awk '{_BSD_MEM}'"),
            ("builds", "ps -A -o user= 2>/dev/null | grep '^nixbld' | sort -u | wc -l"),
        ),
    ),
)
#: The sections of the load probe, with one ``uname -s`` branch.
PROBE_SCRIPT: Final = "".join(
    (
        "os=$(uname -s 2>/dev/null)\n",
        frame("os", 'echo "$os"'),
        "case $os in\n",
        *(
            f"{pattern})\n{''.join(frame(*section) for section in sections)};;\n"
            for pattern, sections in _BRANCHES
        ),
        "esac\n",
        frame("df", f"df -Pk {STORE_DIR}"),
    )
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSpace:
    size_bytes: int
    free_bytes: int
    mount: str


# <filesystem> <1024-blocks> <used> <available> <capacity> <mounted on>: both names may
# contain spaces; a file system without blocks has capacity "-".
_DF_LINE: Final = re.compile(r"^(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(?:\d+%|-)\s+(.+)$")


def parse_df(text: str) -> DiskSpace:
    """The first file system line of ``df -Pk`` output (sizes in KiB): headers, warnings and
    other noise around it are skipped."""
    for line in text.splitlines():
        if match := _DF_LINE.match(line.strip()):
            size, avail = int(match[2]) * 1024, int(match[4]) * 1024
            return DiskSpace(size_bytes=size, free_bytes=avail, mount=match[5])
    raise ParseError(f"no filesystem line in df's output: {text.strip()[:200]!r}")


def read_report(output: ScriptOutput) -> BuilderReport:
    """The report in the output of `PROBE_SCRIPT` (`nixdist.transport.remote_script.
    parse_output`): every value that is missing or does not read as what it should be is
    None, and `BuilderReport.problem` says what is missing and why."""

    def text(name: str) -> str:
        section = output.sections.get(name)
        return section.text if section is not None else ""

    try:
        space: DiskSpace | None = parse_df(text("df"))
    except ParseError:
        space = None
    report = BuilderReport(
        os=" ".join(text("os").split()) or None,
        running_builds=_count(text("builds")),
        load1=_load(text("loadavg").split()),
        cores=_count(text("cores")),
        disk_free=None if space is None else space.free_bytes,
        disk_total=None if space is None else space.size_bytes,
        mem_available=_count(text("mem")),
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
    return dataclasses.replace(report, problem=_problem(output, report, missing))


def _problem(output: ScriptOutput, report: BuilderReport, missing: list[str]) -> str:
    if report.known:
        why = f" ({output.error})" if output.error else ""
        return "it did not tell its " + ", ".join(missing) + why
    if output.error:
        return output.error
    said = "\n".join((output.noise, *(s.text for s in output.sections.values()))).strip()
    return f"its answer told nothing we understand: {said[:200]!r}" if said else "no answer"


def _count(text: str) -> int | None:
    """A non-negative decimal integer (the first word of `text`), or None."""
    words = text.split()
    if not words or not words[0].isascii() or not words[0].isdigit():
        return None
    return int(words[0])


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
    """Ask `target` for its report over its control master (started if needed), within the
    masters' connect timeout.

    Raises `TransportError` only when the builder cannot be reached; a probe that fails, is
    too slow or says nothing we understand gives a report of unknowns with its `problem`.
    """
    output = run_script(
        target,
        masters,
        environ,
        PROBE_SCRIPT,
        what="the load probe",
        timeout=masters.connect_timeout_s,
    )
    return read_report(output)
