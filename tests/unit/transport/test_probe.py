"""The load probe: one constant POSIX script for Linux, macOS and the BSDs, whose sections
(`nixdist.transport.remote_script`) a reader turns into a report without ever turning what it
does not understand into a verdict.

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

from nixdist.errors import ParseError
from nixdist.transport.openssh import ControlMasters, SshTarget
from nixdist.transport.probe import (
    PROBE_SCRIPT,
    BuilderReport,
    DiskSpace,
    parse_df,
    probe_builder,
    read_report,
)
from nixdist.transport.remote_script import MARKER, ScriptOutput, parse_output

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


def _run(bin_dir: Path | None = None) -> BuilderReport:
    """The report of the probe run here, with `bin_dir`'s stand-ins first on the PATH."""
    env = None if bin_dir is None else {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(
        ["/bin/sh", "-c", PROBE_SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    return read_report(parse_output(done.stdout))


def _answer(noise: str = "", **sections: str) -> str:
    """What the probe prints when its sections print `sections` (name: text, status 0)."""
    framed = (f"\n{MARKER} begin {k}\n{v}\n{MARKER} end {k} 0\n" for k, v in sections.items())
    return noise + "".join(framed)


@pytest.mark.parametrize("name", SYSTEMS)
def test_the_script_reads_each_system(tmp_path: Path, name: str) -> None:
    _stand_ins(tmp_path, SYSTEMS[name])
    assert _run(tmp_path) == EXPECTED[name]


def test_the_script_reads_this_linux_machine() -> None:
    report = _run()
    assert report.problem is None, report
    assert report.os == "Linux"
    assert report.cores == os.cpu_count()
    meminfo = Path("/proc/meminfo").read_text()
    available = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)[1]) * 1024  # type: ignore[index]
    assert report.mem_available is not None
    assert abs(report.mem_available - available) < available / 10  # whole, even past 2^31


def test_probe_builder_runs_it_through_the_bounded_runner(tmp_path: Path) -> None:
    """A local target: the same runner as over ssh, without ssh."""
    report = probe_builder(SshTarget(host="localhost"), ControlMasters(tmp_path), dict(os.environ))
    assert (report.problem, report.os) == (None, "Linux")


def test_an_unknown_system_tells_only_its_disk(tmp_path: Path) -> None:
    _stand_ins(tmp_path, {"uname": "Haiku", "df": FREEBSD_DF})
    report = _run(tmp_path)
    assert (report.os, report.disk_free, report.load1, report.running_builds) == (
        "Haiku",
        97530865 * 1024,
        None,
        None,
    )
    assert report.problem == "it did not tell its running builds, load, cores, free memory"


#: A whole answer from a Linux builder: 8 cores, 1 GiB free, one build running.
WHOLE = {
    "os": "Linux",
    "loadavg": "0.50 0.40 0.30 1/99 123",
    "cores": "8",
    "mem": "1073741824",
    "builds": "1",
    "df": "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 1000 10 990 1% /",
}


def test_a_store_that_does_not_exist_yet_leaves_the_rest() -> None:
    # df failed (no /nix/store yet): only the disk is unknown.
    text = _answer(**{**WHOLE, "df": "df: /nix/store: No such file or directory"})
    report = read_report(parse_output(text))
    assert (report.running_builds, report.load_per_core, report.disk_free) == (1, 0.0625, None)
    assert report.problem == "it did not tell its free disk"
    assert read_report(parse_output(_answer(**WHOLE))).problem is None


def test_hidden_proc_and_a_banner() -> None:
    text = _answer("Welcome to builder 7!\n", **{**WHOLE, "loadavg": "", "mem": ""})
    report = read_report(parse_output(text))
    assert (report.load1, report.mem_available, report.cores, report.disk_free) == (
        None,
        None,
        8,
        990 * 1024,
    )
    assert report.os == "Linux"


def test_a_section_cut_short_is_unknown() -> None:
    text = _answer(os="Linux", cores="4") + f"\n{MARKER} begin loadavg\n0.5"
    report = read_report(parse_output(text))
    assert (report.cores, report.load1) == (4, None)


def test_why_the_run_ended_badly_is_part_of_the_problem() -> None:
    stopped = "the load probe did not finish within 2 seconds (still in its df section)"
    partial = parse_output(_answer(**{k: v for k, v in WHOLE.items() if k != "df"}))
    report = read_report(ScriptOutput(sections=partial.sections, error=stopped))
    assert report.problem == f"it did not tell its free disk ({stopped})"
    assert read_report(ScriptOutput(error=stopped)).problem == stopped


@pytest.mark.parametrize(
    "text", ["", "garbage\n", "nixdist-probe\n", "\x00\xff", _answer(os="Linux", cores="x")]
)
def test_nothing_understood_is_a_report_of_unknowns(text: str) -> None:
    report = read_report(parse_output(text))
    assert not report.known
    assert report.problem is not None
    if text.strip():
        assert report.problem.startswith("its answer told nothing we understand: ")
    else:
        assert report.problem == "no answer"


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("loadavg", "-1 0 0"),
        ("loadavg", "nan"),
        ("loadavg", "inf"),
        ("builds", "-3"),
        ("cores", "1e3"),
        ("mem", "٣"),  # a digit, but not an ASCII one
    ],
)
def test_values_that_are_not_what_they_should_be_are_unknown(section: str, text: str) -> None:
    report = read_report(parse_output(_answer(**{section: text})))
    assert (report.load1, report.running_builds, report.cores, report.mem_available) == (
        None,
        None,
        None,
        None,
    )


@given(st.text())
def test_any_output_gives_a_report(text: str) -> None:
    report = read_report(parse_output(text))
    for value in (report.load1, report.running_builds, report.cores, report.disk_free):
        assert value is None or value >= 0


# ---------------------------------------------------------------------------------------
# df, which nixdist check reads too


def test_parse_df() -> None:
    text = (
        "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        "/dev/vda         264212084 24847060  81543852      24% /nix\n"
    )
    assert parse_df(text) == DiskSpace(
        size_bytes=264212084 * 1024, free_bytes=81543852 * 1024, mount="/nix"
    )


def test_parse_df_names_with_spaces_and_noise() -> None:
    text = (
        "some warning\nFilesystem 1024-blocks Used Available Capacity Mounted on\n"
        "my disk 100 40 60 40% /mnt/with space\n"
    )
    assert parse_df(text) == DiskSpace(size_bytes=102400, free_bytes=61440, mount="/mnt/with space")


@pytest.mark.parametrize(("name", "text"), [("Darwin", DARWIN_DF), ("FreeBSD", FREEBSD_DF)])
def test_parse_df_of_macos_and_freebsd(name: str, text: str) -> None:
    space = parse_df(text)
    assert (space.free_bytes, space.size_bytes) == (
        EXPECTED[name].disk_free,
        EXPECTED[name].disk_total,
    )
    assert space.mount == "/nix"


def test_parse_df_of_a_file_system_without_blocks() -> None:
    assert parse_df("none 0 0 0 - /nix/store") == DiskSpace(
        size_bytes=0, free_bytes=0, mount="/nix/store"
    )


@pytest.mark.parametrize("text", ["", "df: /nix/store: No such file or directory", "a b c"])
def test_parse_df_refuses(text: str) -> None:
    with pytest.raises(ParseError, match="no filesystem line"):
        parse_df(text)
