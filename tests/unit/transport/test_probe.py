"""The load probe: one constant POSIX script for Linux, macOS and the BSDs, and a parser that
never turns what it does not understand into a verdict.

The script runs here under /bin/sh with stand-ins for each system's commands (``uname``,
``sysctl``, ``vm_stat``, ``ps``, ``df``) printing what those systems print (the samples follow
the formats in their manuals: vm_stat(1), sysctl(8), ps(1), df(1) of macOS and FreeBSD).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.transport.probe import PROBE_SCRIPT, BuilderReport, parse_report

if TYPE_CHECKING:
    from collections.abc import Mapping

DARWIN_VM_STAT = """\
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               21853.
Pages active:                            388296.
Pages inactive:                          386162.
Pages speculative:                         3437.
Pages throttled:                              0.
Pages wired down:                        147367.
Pages purgeable:                           9721.
"Translation faults":                 518839221.
Pages copy-on-write:                   18316539.
Swapins:                                      0.
Swapouts:                                     0.
"""
DARWIN_DF = """\
Filesystem   1024-blocks     Used Available Capacity  Mounted on
/dev/disk3s7   494384792 12345678 300000000     4%    /nix
"""
FREEBSD_DF = """\
Filesystem 1024-blocks    Used    Avail Capacity  Mounted on
zroot/nix     98765432 1234567 97530865     1%    /nix
"""

SYSTEMS = {
    "Darwin": {
        "uname": "Darwin",
        "sysctl": {"vm.loadavg": "{ 2.19 2.05 2.00 }", "hw.ncpu": "10"},
        "vm_stat": DARWIN_VM_STAT,
        "ps": "root\n_nixbld1\n_nixbld1\n_nixbld3\nalice\n_nixbldx_not\n",
        "df": DARWIN_DF,
    },
    "FreeBSD": {
        "uname": "FreeBSD",
        "sysctl": {
            "vm.loadavg": "{ 0.15 0.20 0.18 }",
            "hw.ncpu": "4",
            "hw.pagesize vm.stats.vm.v_free_count vm.stats.vm.v_inactive_count": (
                "4096\n1000000\n500000"
            ),
        },
        "ps": "root\nnixbld1\nnixbld2\nnixbld2\n_nixbld9\n",
        "df": FREEBSD_DF,
    },
}
EXPECTED = {
    "Darwin": BuilderReport(
        os="Darwin",
        running_builds=3,  # _nixbld1, _nixbld3 and _nixbldx_not all start with _nixbld
        load1=2.19,
        cores=10,
        disk_free=300000000 * 1024,
        disk_total=494384792 * 1024,
        mem_available=(21853 + 386162 + 3437) * 16384,
    ),
    "FreeBSD": BuilderReport(
        os="FreeBSD",
        running_builds=2,
        load1=0.15,
        cores=4,
        disk_free=97530865 * 1024,
        disk_total=98765432 * 1024,
        mem_available=1500000 * 4096,
    ),
}


def _stand_ins(bin_dir: Path, system: Mapping[str, object]) -> None:
    """Commands printing what `system` prints; sysctl answers by its arguments."""
    for name in ("uname", "vm_stat", "ps", "df"):
        text = system.get(name)
        if isinstance(text, str):
            (bin_dir / f"{name}.out").write_text(text if text.endswith("\n") else text + "\n")
            (bin_dir / name).write_text(f'#!/bin/sh\ncat "{bin_dir}/{name}.out"\n')
            (bin_dir / name).chmod(0o755)
    answers = system.get("sysctl", {})
    assert isinstance(answers, dict)
    cases = "".join(
        f'  "-n {args}") printf \'%s\\n\' "{value}" ;;\n' for args, value in answers.items()
    )
    (bin_dir / "sysctl").write_text(f'#!/bin/sh\ncase "$*" in\n{cases}  *) exit 1 ;;\nesac\n')
    (bin_dir / "sysctl").chmod(0o755)


@pytest.mark.parametrize("name", SYSTEMS)
def test_the_script_reads_each_system(tmp_path: Path, name: str) -> None:
    _stand_ins(tmp_path, SYSTEMS[name])
    done = subprocess.run(
        ["/bin/sh", "-c", PROBE_SCRIPT],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert parse_report(done.stdout) == EXPECTED[name]


def test_the_script_reads_this_linux_machine() -> None:
    done = subprocess.run(
        ["/bin/sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, check=False
    )
    report = parse_report(done.stdout)
    assert report.problem is None, done.stdout
    assert report.os == "Linux"
    assert report.cores == os.cpu_count()
    meminfo = Path("/proc/meminfo").read_text()
    available = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)[1]) * 1024  # type: ignore[index]
    assert report.mem_available is not None
    assert abs(report.mem_available - available) < available / 10  # whole, even past 2^31


def test_an_unknown_system_tells_only_its_disk(tmp_path: Path) -> None:
    _stand_ins(tmp_path, {"uname": "Haiku", "df": FREEBSD_DF})
    done = subprocess.run(
        ["/bin/sh", "-c", PROBE_SCRIPT],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    report = parse_report(done.stdout)
    assert (report.os, report.disk_free, report.load1, report.running_builds) == (
        "Haiku",
        97530865 * 1024,
        None,
        None,
    )
    assert report.problem == "it did not tell its running builds, load, cores, free memory"


def test_a_store_that_does_not_exist_yet_leaves_the_rest() -> None:
    # df printed nothing (no /nix/store yet): only the disk is unknown.
    text = (
        "nixdist-probe os Linux\nnixdist-probe loadavg 0.50 0.40 0.30 1/99 123\n"
        "nixdist-probe cores 8\nnixdist-probe mem-bytes 1073741824\n"
        "nixdist-probe builds 1\nnixdist-probe df \n"
    )
    report = parse_report(text)
    assert (report.running_builds, report.load_per_core, report.disk_free) == (1, 0.0625, None)
    assert report.problem == "it did not tell its free disk"


def test_hidden_proc_and_a_banner() -> None:
    text = (
        "Welcome to builder 7!\nnixdist-probe os Linux\nnixdist-probe loadavg \n"
        "nixdist-probe cores 4\nnixdist-probe mem-bytes \nnixdist-probe builds 0\n"
        "nixdist-probe df /dev/sda1 1000 10 990 1% /\n"
    )
    report = parse_report(text)
    assert (report.load1, report.mem_available, report.cores, report.disk_free) == (
        None,
        None,
        4,
        990 * 1024,
    )


@pytest.mark.parametrize("text", ["", "garbage\n", "nixdist-probe\n", "\x00\xff"])
def test_nothing_understood_is_a_report_of_unknowns(text: str) -> None:
    report = parse_report(text)
    assert not report.known
    assert report.problem is not None


@pytest.mark.parametrize(
    "line",
    [
        "nixdist-probe loadavg -1 0 0",
        "nixdist-probe loadavg nan",
        "nixdist-probe loadavg inf",
        "nixdist-probe builds -3",
        "nixdist-probe cores 1e3",
        "nixdist-probe mem-bytes ٣",  # a digit, but not an ASCII one
    ],
)
def test_values_that_are_not_what_they_should_be_are_unknown(line: str) -> None:
    report = parse_report(line)
    assert (report.load1, report.running_builds, report.cores, report.mem_available) == (
        None,
        None,
        None,
        None,
    )


@given(st.text())
def test_any_output_gives_a_report(text: str) -> None:
    report = parse_report(text)
    for value in (report.load1, report.running_builds, report.cores, report.disk_free):
        assert value is None or value >= 0
