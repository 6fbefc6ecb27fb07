"""The pure parts of `nixdist check` about builders: ssh's words and the verdict rules
(`assess_builder`). What builders are asked and the parsers of their answers are tested in
`tests/unit/transport` (test_check_script, test_probe, test_remote_script), the verdicts on
this host in test_checks_local.

ssh's messages below are what OpenSSH 9.2 printed against the local farm.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import replace

import pytest

from nixdist.cli.check.observe import (
    WRITE_TEST_NAME,
    check_builders,
    write_test_path,
)
from nixdist.cli.check.ssh import Reach, classify_ssh_error, key_fingerprint, ssh_gist
from nixdist.cli.check.verdicts import (
    BUILDER_CHECKS,
    FULL_DISK_BYTES,
    LOW_DISK_BYTES,
    BuilderReport,
    Check,
    CheckReport,
    Finding,
    HostKey,
    Observed,
    Status,
    assess_builder,
    disk_finding,
    features_finding,
    render_bytes,
    report_to_json,
    systems_finding,
    untrusted_finding,
    verdict,
    worst,
)
from nixdist.errors import ParseError
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.machines import Machine
from nixdist.transport.check_script import (
    RemoteSettings,
)
from nixdist.transport.probe import DiskSpace
from nixdist.transport.remote_script import ScriptOutput, Section
from nixdist.wire.nar import Contents, Regular
from nixdist.wire.nar_reader import decode_nar

HOST_KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrO+kDW8/XB8Jtv128k+yzhPjuPcWe3N0eOIR//a/SV"
HOST_KEY_FP = "SHA256:GIWio3zmq72DlxW91WsQY5/AApiz7Jo52UzujCbkbkg"  # ssh-keygen -lf
OTHER_FP = "SHA256:xilEi5nsWnB+tt4zF884B5rW9888unMxkpZlUO6KBHE"

MISMATCH = f"""\
cannot connect to 'b2': @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
{OTHER_FP}.
Please contact your system administrator.
Add correct host key in /tmp/kh to get rid of this message.
Offending ED25519 key in /tmp/kh:1
  remove with:
  ssh-keygen -f "/tmp/kh" -R "nixdist-pinned-host"
Host key for nixdist-pinned-host has changed and you have requested strict checking.
Host key verification failed."""
UNKNOWN_KEY = (
    "No ED25519 host key is known for b1 and you have requested strict checking.\n"
    "Host key verification failed."
)
REFUSED = "cannot connect to 'b1': ssh: connect to host 127.0.0.1 port 57107: Connection refused"
AUTH = "cannot connect to 'b2': root@127.0.0.1: Permission denied (publickey)."
BANNER_TIMEOUT = (
    "cannot connect to 'b1': Connection timed out during banner exchange\n"
    "Connection to 127.0.0.1 port 57107 timed out"
)


# ---------------------------------------------------------------------------------------
# ssh's key fingerprints


def _setting(value: object) -> dict[str, object]:
    return {"aliases": [], "defaultValue": value, "description": "…", "value": value}


def test_key_fingerprint_is_ssh_keygens() -> None:
    assert key_fingerprint(HOST_KEY_LINE) == HOST_KEY_FP
    assert key_fingerprint(HOST_KEY_LINE + " root@b1") == HOST_KEY_FP
    for bad in ("ssh-ed25519", "ssh-ed25519 not!base64"):
        with pytest.raises(ParseError):
            key_fingerprint(bad)


# ---------------------------------------------------------------------------------------
# ssh's words


@pytest.mark.parametrize(
    ("text", "pinned", "reach"),
    [
        (MISMATCH, True, Reach.HOST_KEY_MISMATCH),
        (MISMATCH, False, Reach.HOST_KEY_MISMATCH),
        (UNKNOWN_KEY, False, Reach.HOST_KEY_UNKNOWN),
        (UNKNOWN_KEY, True, Reach.HOST_KEY_MISMATCH),  # the builder lacks the pinned key type
        (AUTH, True, Reach.AUTH_REFUSED),
        ("Received disconnect: Too many authentication failures", False, Reach.AUTH_REFUSED),
        (BANNER_TIMEOUT, True, Reach.TIMED_OUT),
        ("ssh b1: no answer within 10 seconds", False, Reach.TIMED_OUT),
        ("cannot connect to 'b1': timed out", False, Reach.TIMED_OUT),
        (REFUSED, True, Reach.UNREACHABLE),
        (
            "ssh: Could not resolve hostname nope: Name or service not known",
            False,
            Reach.UNREACHABLE,
        ),
        ("ssh: connect to host 10.0.0.1 port 22: No route to host", False, Reach.UNREACHABLE),
        ("kex_exchange_identification: Connection closed by remote host", False, Reach.UNREACHABLE),
        ("command-line line 0: Bad configuration option: foo", False, Reach.SSH_FAILED),
    ],
)
def test_classify_ssh_error(text: str, pinned: bool, reach: Reach) -> None:
    assert classify_ssh_error(text, pinned=pinned) is reach


def test_ssh_gist_drops_banners_and_advice() -> None:
    assert ssh_gist(MISMATCH) == (
        "Host key for nixdist-pinned-host has changed and you have requested strict checking. "
        "Host key verification failed."
    )
    assert ssh_gist(REFUSED) == "connect to host 127.0.0.1 port 57107: Connection refused"
    assert ssh_gist(BANNER_TIMEOUT) == (
        "Connection timed out during banner exchange; Connection to 127.0.0.1 port 57107 timed out"
    )
    assert ssh_gist("  ") == ""


# ---------------------------------------------------------------------------------------
# The write test


def test_write_test_path_is_a_valid_unsigned_input_addressed_path() -> None:
    info, nar = write_test_path()
    events = decode_nar(nar)
    assert isinstance(events[0], Regular)
    assert isinstance(events[1], Contents)
    assert info.path.name == WRITE_TEST_NAME
    assert info.nar_size == len(nar)
    assert info.nar_hash == Hash.of(HashAlgo.SHA256, nar)
    assert (info.sigs, info.ca, info.references, info.deriver) == ((), "", frozenset(), None)
    assert write_test_path()[0].path != info.path  # a new name every time


# ---------------------------------------------------------------------------------------
# Verdicts on a builder

MACHINE = Machine(
    uri="ssh://b1",
    systems=("x86_64-linux", "aarch64-linux"),
    supported_features=frozenset({"kvm"}),
    mandatory_features=frozenset({"benchmark"}),
    public_host_key=base64.b64encode(HOST_KEY_LINE.encode()).decode(),
    source="/etc/nix/machines:1",
)
CONFIG = json.dumps(
    {
        "system": _setting("x86_64-linux"),
        "extra-platforms": _setting(["aarch64-linux"]),
        "system-features": _setting(["benchmark", "kvm", "nixos-test"]),
    }
)
DF = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 4194304 0 4194304 0% /"
LOAD = {  # the load probe's sections
    "os": Section(status=0, text="Linux\n"),
    "loadavg": Section(status=0, text="0.52 0.58 0.59 1/456 7890\n"),
    "cores": Section(status=0, text="4\n"),
    "mem": Section(status=0, text="8589934592"),
    "builds": Section(status=0, text="1\n"),
}

HEALTHY = Observed(
    connect_ms=12.3,
    handshake_ms=45.6,
    serve_protocol="2.7",
    write_tried=True,
    probe=ScriptOutput(
        sections={
            "version": Section(status=0, text="nix-store (Nix) 2.8.0\n"),
            "config": Section(status=0, text=CONFIG),
            **LOAD,
            "df": Section(status=0, text=DF),
            "delete": Section(status=0, text="1 store paths deleted\n"),
        }
    ),
)


def _assess(observed: Observed, machine: Machine = MACHINE) -> BuilderReport:
    return assess_builder(machine, "b1", observed, timeout=10)


def _by_check(report: BuilderReport) -> dict[Check, Finding]:
    assert [f.check for f in report.findings] == list(BUILDER_CHECKS)
    return {f.check: f for f in report.findings}


def test_healthy_builder() -> None:
    report = _assess(HEALTHY)
    findings = _by_check(report)
    assert all(f.status is Status.OK for f in findings.values()), findings
    assert report.usable
    assert verdict(report) == "ok"
    assert (report.reach, report.host_key) == (Reach.CONNECTED, HostKey.PINNED)
    assert (report.nix_version, report.serve_protocol, report.system) == (
        "2.8.0",
        "2.7",
        "x86_64-linux",
    )
    assert report.extra_platforms == ("aarch64-linux",)
    assert report.system_features == ("benchmark", "kvm", "nixos-test")
    assert report.store_free_bytes == 4 * 1024**3
    assert findings[Check.CONNECT].message == "connected in 12 ms"
    assert "protocol 2.7" in findings[Check.SERVE].message


def test_unpinned_host_key() -> None:
    report = _assess(HEALTHY, replace(MACHINE, public_host_key=None))
    assert report.host_key is HostKey.NOT_PINNED
    assert _by_check(report)[Check.HOST_KEY].status is Status.OK


@pytest.mark.parametrize(
    ("error", "reach", "host_key"),
    [
        (REFUSED, Reach.UNREACHABLE, HostKey.UNCHECKED),
        (BANNER_TIMEOUT, Reach.TIMED_OUT, HostKey.UNCHECKED),
        (AUTH, Reach.AUTH_REFUSED, HostKey.PINNED),
        (MISMATCH, Reach.HOST_KEY_MISMATCH, HostKey.MISMATCH),
        (UNKNOWN_KEY, Reach.HOST_KEY_MISMATCH, HostKey.MISMATCH),
    ],
)
def test_connection_failures_make_the_builder_unusable(
    error: str, reach: Reach, host_key: HostKey
) -> None:
    report = _assess(Observed(connect_error=error))
    findings = _by_check(report)
    assert (report.reach, report.host_key, report.usable) == (reach, host_key, False)
    assert verdict(report) == f"unusable: {reach}"
    assert findings[Check.CONNECT].status is Status.FAIL
    assert findings[Check.CONNECT].message.startswith(f"{reach}: ")
    assert all(findings[c].status is Status.SKIP for c in BUILDER_CHECKS[2:])


def test_host_key_mismatch_names_both_fingerprints() -> None:
    key = _by_check(_assess(Observed(connect_error=MISMATCH)))[Check.HOST_KEY]
    assert key.status is Status.FAIL
    assert key.message == (
        f"host key mismatch: the machines line pins {HOST_KEY_FP}, the builder sent {OTHER_FP}"
    )
    assert "field 8" in key.hint


def test_unknown_host_key_when_not_pinned() -> None:
    report = _assess(Observed(connect_error=UNKNOWN_KEY), replace(MACHINE, public_host_key=None))
    assert (report.reach, report.host_key) == (Reach.HOST_KEY_UNKNOWN, HostKey.UNKNOWN)
    assert "known_hosts" in _by_check(report)[Check.HOST_KEY].message


def test_noisy_shell_fails_with_serve_stores_words() -> None:
    said = "'nix-store --serve' protocol mismatch from 'b1': expected its greeting, got 'hi'."
    observed = replace(
        HEALTHY,
        handshake_ms=None,
        serve_protocol=None,
        serve_error=said,
        noisy_greeting=True,
        write_tried=False,
        probe=replace(HEALTHY.probe, noise="hi\n"),
    )
    report = _assess(observed)
    findings = _by_check(report)
    assert findings[Check.SHELL].status is Status.FAIL
    assert findings[Check.SHELL].message == f"noisy shell: {said}"
    assert findings[Check.SERVE].status is Status.SKIP
    assert findings[Check.STORE].status is Status.SKIP
    assert findings[Check.NIX].status is Status.OK  # the framed probe still got through
    assert verdict(report) == "unusable: noisy shell"


def test_chatter_the_handshake_survived_is_a_warning() -> None:
    report = _assess(replace(HEALTHY, probe=replace(HEALTHY.probe, noise="motd\n")))
    assert _by_check(report)[Check.SHELL].status is Status.WARN
    assert _by_check(report)[Check.SHELL].message == "the shell printed 'motd'"
    assert report.usable
    blank = _assess(replace(HEALTHY, probe=replace(HEALTHY.probe, noise="\n")))
    assert _by_check(blank)[Check.SHELL].status is Status.OK


def test_serve_failure_other_than_chatter() -> None:
    observed = replace(
        HEALTHY, serve_error="closed the connection before its greeting", write_tried=False
    )
    findings = _by_check(_assess(observed))
    assert findings[Check.SERVE].status is Status.FAIL
    assert "PATH" in findings[Check.SERVE].hint
    assert findings[Check.SHELL].status is Status.OK


def test_claims_the_builder_cannot_honour_are_warnings() -> None:
    machine = replace(
        MACHINE, systems=("x86_64-linux", "riscv64-linux"), supported_features=frozenset({"gpu"})
    )
    report = _assess(HEALTHY, machine)
    findings = _by_check(report)
    assert findings[Check.SYSTEMS].status is Status.WARN
    assert "claims riscv64-linux" in findings[Check.SYSTEMS].message
    assert findings[Check.FEATURES].status is Status.WARN
    assert "claims gpu" in findings[Check.FEATURES].message
    assert report.usable
    assert verdict(report) == "warnings: systems, features"


def test_unreadable_settings() -> None:
    probe = replace(
        HEALTHY.probe,
        sections={
            **HEALTHY.probe.sections,
            "config": Section(status=127, text="sh: nix: not found\n"),
        },
    )
    findings = _by_check(_assess(replace(HEALTHY, probe=probe)))
    assert findings[Check.SYSTEMS].status is Status.WARN
    assert findings[Check.SYSTEMS].message.endswith("(nix show-config): sh: nix: not found")
    assert findings[Check.FEATURES].status is Status.SKIP


def test_probe_session_failure() -> None:
    findings = _by_check(
        _assess(replace(HEALTHY, probe=ScriptOutput(error="no answer within 10 s")))
    )
    for check in (Check.NIX, Check.SYSTEMS, Check.DISK):
        assert findings[check].status is Status.WARN
        assert "no answer within 10 s" in findings[check].message


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            "cannot add path '/nix/store/…' because it lacks a valid signature",
            "refuses unsigned paths",
        ),
        ("error: opening lock file: Read-only file system", "cannot add a path"),
    ],
)
def test_store_not_writable(error: str, words: str) -> None:
    finding = _by_check(_assess(replace(HEALTHY, write_error=error)))[Check.STORE]
    assert finding.status is Status.FAIL
    assert words in finding.message


@pytest.mark.parametrize(
    ("host", "trusted", "message", "hint"),
    [
        (
            "nix@b3.example",
            ("root", "@wheel"),
            "refuses unsigned paths from nix, who is not in its trusted-users",
            (
                "On b3.example, set trusted-users = root @wheel nix in /etc/nix/nix.conf (now:"
                " trusted-users = root @wheel) and restart its nix-daemon; or log in as root."
            ),
        ),
        (
            "nix@b3.example",
            None,
            "refuses unsigned paths from nix",
            "On b3.example, set trusted-users = root nix in /etc/nix/nix.conf and restart",
        ),
        (
            "b3.example",
            ("root",),
            "refuses unsigned paths from the ssh user",
            "ssh -G b3.example",
        ),
    ],
)
def test_untrusted_user_is_named_with_the_line_to_add(
    host: str, trusted: tuple[str, ...] | None, message: str, hint: str
) -> None:
    error = "error: cannot add path '/nix/store/…' because it lacks a valid signature"
    finding = untrusted_finding(host, error, trusted)
    assert finding.status is Status.FAIL
    assert message in finding.message
    assert error in finding.message
    assert hint in finding.hint


@pytest.mark.parametrize(
    ("free", "status"),
    [
        (LOW_DISK_BYTES, Status.OK),
        (LOW_DISK_BYTES - 1, Status.WARN),
        (FULL_DISK_BYTES, Status.WARN),
        (FULL_DISK_BYTES - 1, Status.FAIL),
    ],
)
def test_disk_thresholds(free: int, status: Status) -> None:
    assert (
        disk_finding(DiskSpace(size_bytes=10 * free, free_bytes=free, mount="/")).status is status
    )


def test_systems_and_features_in_words() -> None:
    settings = RemoteSettings(
        system="x86_64-linux", extra_platforms=frozenset(), system_features=frozenset()
    )
    assert systems_finding(replace(MACHINE, systems=("x86_64-linux",)), settings).message == (
        "x86_64-linux (builder: system x86_64-linux, extra-platforms none)"
    )
    plain = replace(MACHINE, supported_features=frozenset(), mandatory_features=frozenset())
    assert features_finding(plain, settings).message == "none (builder: none)"


def test_report_to_json_and_exit_verdict() -> None:
    healthy = _assess(HEALTHY)
    down = _assess(Observed(connect_error=REFUSED))
    local = (Finding(check=Check.TRUSTED, status=Status.WARN, message="m", hint="h"),)
    report = CheckReport(machines_origin="m", local=local, builders=(healthy, down))
    assert not report.ok
    assert CheckReport(machines_origin="m", local=local, builders=(healthy,)).ok
    data = json.loads(json.dumps(report_to_json(report)))
    assert data["ok"] is False
    assert data["local"] == [{"check": "trusted", "status": "warn", "message": "m", "hint": "h"}]
    first, second = data["builders"]
    assert (first["status"], first["usable"], first["verdict"]) == ("ok", True, "ok")
    assert (second["status"], second["reach"], second["host_key"]) == (
        "fail",
        "unreachable",
        "unchecked",
    )
    assert first["findings"][0] == {
        "check": "connect",
        "status": "ok",
        "message": "connected in 12 ms",
        "hint": "",
    }
    assert set(first) >= {"uri", "host", "connect_ms", "nix_version", "serve_protocol", "system"}


def test_worst_and_render_bytes() -> None:
    assert worst([]) is Status.OK
    assert worst([Status.SKIP, Status.OK]) is Status.OK
    assert worst([Status.OK, Status.FAIL, Status.WARN]) is Status.FAIL
    assert [render_bytes(n) for n in (0, 1023, 1024, 1536 * 1024**2, 3 * 1024**5)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 GiB",
        "3072.0 TiB",
    ]


def test_machines_that_cannot_be_tried() -> None:
    """Judged without any connection: a store type builds cannot go to, no host, a host key
    that is not text."""
    bad_key = base64.b64encode(b"\xff\xfe").decode()
    machines = [
        Machine(uri="s3://bucket", systems=("x86_64-linux",)),
        Machine(uri="ssh://", systems=("x86_64-linux",)),
        Machine(uri="ssh://b1", systems=("x86_64-linux",), public_host_key=bad_key),
    ]
    reports = check_builders(machines, {}, timeout=1)
    assert [r.reach for r in reports] == [Reach.UNSUPPORTED, Reach.BAD_LINE, Reach.BAD_LINE]
    assert [verdict(r) for r in reports] == [
        "unusable: unsupported",
        "unusable: bad machines line",
        "unusable: bad machines line",
    ]
    for report in reports:
        assert not report.usable
        assert [f.check for f in report.findings] == list(BUILDER_CHECKS)
    assert "cannot build on s3:// stores" in reports[0].findings[0].message


def test_a_builder_whose_load_probe_tells_little_is_warned_about_not_failed() -> None:
    hidden = {"loadavg": Section(status=0, text=""), "mem": Section(status=2, text="")}
    sections = {**HEALTHY.probe.sections, **hidden}
    observed = dataclasses.replace(HEALTHY, probe=ScriptOutput(sections=sections))
    finding = _by_check(_assess(observed))[Check.LOAD]
    assert finding.status is Status.WARN
    assert finding.message == "no full load report (Linux): it did not tell its load, free memory"
    assert _assess(observed).usable
    assert _by_check(_assess(HEALTHY))[Check.LOAD].message == (
        "Linux: load 0.13/core, 1 builds running, 8.0 GiB memory free"
    )
