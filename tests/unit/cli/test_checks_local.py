"""`nixdist check`'s verdicts on this host (`nixdist.cli.check.local`): the build hook Nix
runs, its builders, the current-load directory, and whether this user is trusted."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from nixdist.cli.check.local import LocalFacts, hook_is_nixdist, is_trusted, local_findings
from nixdist.cli.check.verdicts import Check, Finding, Status

GOOD_HOST = LocalFacts(
    build_hook="/usr/local/bin/nixdist-hook",
    build_hook_origin="/etc/nix/nix.conf:3",
    build_hook_runnable=True,
    builders_origin="builders = @/etc/nix/machines",
    builders_count=2,
    current_load="/nix/var/nix/current-load",
    current_load_writable=True,
    user="root",
    is_root=True,
)


def _local(facts: LocalFacts) -> dict[Check, Finding]:
    return {f.check: f for f in local_findings(facts)}


def test_good_host() -> None:
    findings = _local(GOOD_HOST)
    assert list(findings) == [Check.BUILD_HOOK, Check.BUILDERS, Check.CURRENT_LOAD, Check.TRUSTED]
    assert all(f.status is Status.OK for f in findings.values()), findings
    assert findings[Check.BUILD_HOOK].message == "/usr/local/bin/nixdist-hook (/etc/nix/nix.conf:3)"
    assert findings[Check.BUILDERS].message == "2 machines (builders = @/etc/nix/machines)"


@pytest.mark.parametrize(
    ("hook", "runnable", "status", "words"),
    [
        ("", False, Status.WARN, "not set: Nix uses its own build-remote"),
        ("/nix/libexec/build-remote", True, Status.WARN, "is not nixdist"),
        ("/gone/nixdist-hook", False, Status.FAIL, "not an executable file"),
        ("/usr/bin/nixdist hook", True, Status.OK, "/usr/bin/nixdist hook"),
    ],
)
def test_build_hook(hook: str, runnable: bool, status: Status, words: str) -> None:
    facts = replace(GOOD_HOST, build_hook=hook, build_hook_runnable=runnable)
    finding = _local(facts)[Check.BUILD_HOOK]
    assert finding.status is status
    assert words in finding.message


def test_hook_is_nixdist() -> None:
    assert hook_is_nixdist("/x/nixdist-hook")
    assert hook_is_nixdist("nixdist hook")
    assert not hook_is_nixdist("/x/nixdist")
    assert not hook_is_nixdist("/x/nixdist machines")
    assert not hook_is_nixdist("")


def test_builders() -> None:
    none = replace(GOOD_HOST, builders_count=0)
    assert _local(none)[Check.BUILDERS].status is Status.FAIL
    assert _local(none)[Check.BUILDERS].message == (
        "no builders: builders = @/etc/nix/machines lists no machine"
    )
    given_file = replace(none, machines_file="/tmp/m")
    assert _local(given_file)[Check.BUILDERS].status is Status.WARN
    broken = replace(GOOD_HOST, builders_count=None, builders_error="nix.conf:2: illegal line")
    assert _local(broken)[Check.BUILDERS] == Finding(
        check=Check.BUILDERS, status=Status.FAIL, message="nix.conf:2: illegal line"
    )
    assert _local(replace(GOOD_HOST, builders_count=1))[Check.BUILDERS].message.startswith(
        "1 machine ("
    )


def test_current_load() -> None:
    locked = replace(GOOD_HOST, current_load_writable=False)
    assert _local(locked)[Check.CURRENT_LOAD].status is Status.FAIL
    user = replace(locked, is_root=False, user="alice", uses_daemon=True)
    assert _local(user)[Check.CURRENT_LOAD].status is Status.OK
    assert "nix-daemon" in _local(user)[Check.CURRENT_LOAD].message


def test_trusted() -> None:
    alice = replace(GOOD_HOST, is_root=False, user="alice", groups=frozenset({"wheel"}))
    assert _local(alice)[Check.TRUSTED].status is Status.WARN
    for trusted in (("root", "alice"), ("@wheel",), ("*",)):
        assert _local(replace(alice, trusted_users=trusted))[Check.TRUSTED].status is Status.OK


def test_is_trusted() -> None:
    assert is_trusted("a", frozenset(), ["a"])
    assert is_trusted("a", frozenset({"g"}), ["@g"])
    assert not is_trusted("a", frozenset({"g"}), ["g", "@a", "root"])


def test_a_build_hook_nix_ignores_is_a_failure_that_says_why() -> None:
    facts = LocalFacts(
        build_hook="/usr/bin/nixdist-hook",
        build_hook_origin="/etc/nix/nix.conf:3",
        build_hook_runnable=True,
        effective_build_hook="/usr/bin/nix __build-remote",
    )
    finding = local_findings(facts)[0]
    assert finding.status is Status.FAIL
    assert finding.message == (
        "/usr/bin/nixdist-hook (/etc/nix/nix.conf:3) is ignored: Nix uses /usr/bin/nix"
        " __build-remote (Nix 2.25 to 2.33 read build-hook from nix.conf too early,"
        " NixOS/nix#15083)"
    )
    assert "NIX_CONFIG='build-hook = /usr/bin/nixdist-hook'" in finding.hint
    honoured = dataclasses.replace(facts, effective_build_hook="/usr/bin/nixdist-hook")
    assert local_findings(honoured)[0].status is Status.OK
    unknown = dataclasses.replace(facts, effective_build_hook=None)  # Nix could not be asked
    assert local_findings(unknown)[0].status is Status.OK
