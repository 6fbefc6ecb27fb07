"""What `nixdist check` finds out, as values: each builder's health, and this host's setup.

Click-free, so that a dashboard can run the same checks; `nixdist.cli.check.command` only
renders the `CheckReport`. This module judges builders (findings from what was observed, pure);
the package's other modules are listed in `nixdist.cli.check`. What builders are asked, and
the parsers of their answers, are `nixdist.transport.check_script` and
`nixdist.transport.probe`.

Each check gives a `Finding` (ok / warn / fail / skip, a message in words, a hint). A builder
is *usable* unless one of its checks failed; warnings keep it usable.

Per builder (`check_builders`), in order; a check that cannot run after a failure is skipped:

- **connect**: a fresh ssh control master, started exactly as the hook starts one
  (``NIX_SSHOPTS``, field 3 key, field 8 pinning, ``BatchMode``, ``ConnectTimeout``) but in a
  private temporary directory, so it tests a new connection, not one the hook left running.
  Its time is ssh's connect plus authentication. A failure is put in words from ssh's own
  stderr (`classify_ssh_error`): unreachable, timed out, authentication refused, host key
  mismatch, host key unknown.
- **host key**: pinned in field 8 and matching / not pinned (known_hosts accepted it) /
  mismatch, with the fingerprints pinned and sent.
- **serve** and **shell**: the builder's store over that master (`ServeStore` for ``ssh://``,
  `DaemonStore` for ``ssh-ng://``): the greeting's time and the negotiated protocol version.
  A remote shell that prints on stdout breaks the greeting; the message is ServeStore's (the
  cause of Nix's "serialised integer … is too big").
- **nix**: ``nix-store --version``. **systems** / **features**: the builder's own ``system``,
  ``extra-platforms`` and ``system-features`` (``nix show-config --json``) must cover what its
  machines line claims, else a warning (such builds would fail there).
- **store**: a tiny unsigned input-addressed path with a random name is added over serve
  (as the hook sends inputs: AddToStoreNar) and deleted right after. This proves the store is
  writable *and* that the builder takes unsigned paths from this user (``trusted-users``).
- **disk**: free space on the store's filesystem (``df -Pk``): a warning below
  `LOW_DISK_BYTES`, a failure below `FULL_DISK_BYTES`.

The builder-side commands run in one session as a ``sh -c`` script whose sections are framed
by marker lines (`nixdist.transport.check_script`, the load probe's sections among them): a
noisy shell cannot garble them, and what precedes the first marker is the shell's chatter.

This host (`local_findings`): ``build-hook`` runs nixdist (``…/nixdist-hook`` or ``…/nixdist
hook``); Nix's ``builders`` lists a machine; the ``current-load`` directory (slot locks) is
writable by whoever runs the hook; the user is root or in ``trusted-users`` (a nix-daemon
ignores an untrusted user's ``--builders`` and ``--option build-hook``).

Builders are checked in parallel threads: a dead one costs one timeout, not one per builder.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nixdist.cli.check.ssh import (
    FINGERPRINT,
    Reach,
    classify_ssh_error,
    key_fingerprint,
    ssh_gist,
)
from nixdist.errors import ParseError
from nixdist.model.machines import decode_host_key
from nixdist.transport.check_script import RemoteSettings, parse_nix_version, parse_show_config
from nixdist.transport.probe import DiskSpace, parse_df, read_report
from nixdist.transport.remote_script import ScriptOutput

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nixdist.model.machines import Machine

LOW_DISK_BYTES: Final = 1024**3
"""Less free space than this on a builder's store filesystem is a warning."""
FULL_DISK_BYTES: Final = 100 * 1024**2
"""Less than this makes the builder unusable: builds would fail there."""


class Status(enum.StrEnum):
    OK = "ok"
    SKIP = "skip"  # not checked: an earlier step failed
    WARN = "warn"
    FAIL = "fail"


_SEVERITY: Final = {Status.OK: 0, Status.SKIP: 1, Status.WARN: 2, Status.FAIL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of `statuses`; OK when there are none, or only skips."""
    found = max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)
    return Status.OK if found is Status.SKIP else found


class Check(enum.StrEnum):
    CONNECT = "connect"
    HOST_KEY = "host key"
    SERVE = "serve"
    SHELL = "shell"
    NIX = "nix"
    SYSTEMS = "systems"
    FEATURES = "features"
    STORE = "store"
    DISK = "disk"
    LOAD = "load report"
    BUILD_HOOK = "build-hook"
    BUILDERS = "builders"
    CURRENT_LOAD = "current-load"
    TRUSTED = "trusted"


BUILDER_CHECKS: Final = tuple(Check)[:10]


class HostKey(enum.StrEnum):
    PINNED = "pinned"  # field 8, and the builder presented that key
    NOT_PINNED = "not pinned"  # ssh's known_hosts accepted it
    MISMATCH = "mismatch"
    UNKNOWN = "unknown"  # not pinned and not in known_hosts
    UNCHECKED = "unchecked"  # ssh did not get that far


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One check: how it went, in words, and what to do about it."""

    check: Check
    status: Status
    message: str
    hint: str = ""


def _ok(check: Check, message: str) -> Finding:
    return Finding(check=check, status=Status.OK, message=message)


def _warn(check: Check, message: str, hint: str = "") -> Finding:
    return Finding(check=check, status=Status.WARN, message=message, hint=hint)


def _fail(check: Check, message: str, hint: str = "") -> Finding:
    return Finding(check=check, status=Status.FAIL, message=message, hint=hint)


def _skip(check: Check, why: str) -> Finding:
    return Finding(check=check, status=Status.SKIP, message=f"not checked: {why}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuilderReport:
    """What `check_builders` learnt about one machine, and its findings."""

    uri: str
    host: str
    source: str  # file:line of the machines line
    reach: Reach
    host_key: HostKey
    connect_ms: float | None = None
    handshake_ms: float | None = None
    serve_protocol: str | None = None  # negotiated, "2.7"
    nix_version: str | None = None
    system: str | None = None
    extra_platforms: tuple[str, ...] = ()
    system_features: tuple[str, ...] = ()
    store_free_bytes: int | None = None
    store_size_bytes: int | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def status(self) -> Status:
        return worst(f.status for f in self.findings)

    @property
    def usable(self) -> bool:
        """False when a check failed: the hook could not build there."""
        return self.status is not Status.FAIL


def verdict(report: BuilderReport) -> str:
    """A builder's state in a few words: ``ok``, ``warnings: disk``, ``unusable: noisy shell``."""
    failed = [f.check for f in report.findings if f.status is Status.FAIL]
    warned = [f.check for f in report.findings if f.status is Status.WARN]
    if failed:
        first = failed[0]
        if first is Check.CONNECT:
            return f"unusable: {report.reach}"
        return f"unusable: {'noisy shell' if first is Check.SHELL else first}"
    return f"warnings: {', '.join(warned)}" if warned else "ok"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckReport:
    """The whole answer of `nixdist check`."""

    machines_origin: str  # where the machines came from, in words
    local: tuple[Finding, ...]
    builders: tuple[BuilderReport, ...]

    @property
    def ok(self) -> bool:
        """No failure anywhere: the command exits 0."""
        statuses = [f.status for f in self.local] + [b.status for b in self.builders]
        return worst(statuses) is not Status.FAIL


# ---------------------------------------------------------------------------------------
# Verdicts (pure): what was observed -> findings


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """The raw outcome of talking to one builder."""

    connect_error: str | None = None  # ssh's words; None: connected
    connect_ms: float | None = None
    handshake_ms: float | None = None
    serve_protocol: str | None = None
    serve_error: str | None = None  # None: the handshake worked (or was not tried)
    noisy_greeting: bool = False  # serve_error is ServeStore's "printed on stdout" text
    write_tried: bool = False
    write_error: str | None = None
    probe: ScriptOutput = field(default_factory=ScriptOutput)  # the check script's answer


_CONNECT_HINTS: Final = {
    Reach.UNREACHABLE: "Is the builder up, and are its host name and port right? Try: ssh {host}",
    Reach.TIMED_OUT: "No answer within {timeout:g} s: is the builder up and not frozen, and "
    "does nothing drop the connection? Try: ssh {host}",
    Reach.AUTH_REFUSED: "The builder refuses this client's key: check field 3 (SSH key) of "
    "the machines line and the builder's authorized_keys. Under a nix-daemon the hook runs "
    "as root, so root must be able to log in.",
    Reach.HOST_KEY_MISMATCH: "The builder's host key is not the one pinned in field 8 of its "
    "machines line. If the builder was reinstalled, pin its new key: base64 -w0 of its "
    "/etc/ssh/ssh_host_ed25519_key.pub.",
    Reach.HOST_KEY_UNKNOWN: "Pin the builder's host key in field 8 of its machines line "
    "(base64 -w0 of its /etc/ssh/ssh_host_ed25519_key.pub), or add it to the known_hosts of "
    "the user that runs the hook (root under a nix-daemon).",
    Reach.SSH_FAILED: "Try: ssh {host}",
}
_SERVE_HINT: Final = (
    "Is nix-store on the PATH of non-interactive ssh sessions there? Try: ssh {host} "
    "nix-store --version"
)
_SHELL_HINT: Final = (
    "Find what prints it: ssh {host} true | od -c. A ~/.bashrc should print nothing when "
    'not interactive, e.g. start with: [ -z "$PS1" ] && return'
)
_UNTRUSTED: Final = ("lacks a valid signature", "lacks a signature", "not trusted")


def _connect_findings(
    host: str, observed: Observed, machine: Machine, timeout: float
) -> tuple[Reach, HostKey, list[Finding]]:
    pinned = machine.public_host_key is not None
    error = observed.connect_error
    if error is None:
        ms = "" if observed.connect_ms is None else f" in {observed.connect_ms:.0f} ms"
        host_key, key = _host_key_ok(pinned)
        return Reach.CONNECTED, host_key, [_ok(Check.CONNECT, f"connected{ms}"), key]
    reach = classify_ssh_error(error, pinned=pinned)
    hint = _CONNECT_HINTS[reach].format(host=host, timeout=timeout)
    gist = f"{reach}: {ssh_gist(error)}"
    if reach is Reach.HOST_KEY_MISMATCH:
        detail = f"the machines line pins {_pinned_fingerprint(machine.public_host_key)}"
        if sent := FINGERPRINT.search(error):
            detail += f", the builder sent {sent[0]}"
        key = _fail(Check.HOST_KEY, f"{reach}: {detail}", hint)
        return reach, HostKey.MISMATCH, [_fail(Check.CONNECT, gist), key]
    if reach is Reach.HOST_KEY_UNKNOWN:
        key = _fail(Check.HOST_KEY, f"{reach}: not pinned, and not in known_hosts", hint)
        return reach, HostKey.UNKNOWN, [_fail(Check.CONNECT, gist), key]
    if reach is Reach.AUTH_REFUSED:  # ssh checks the host key before it authenticates
        host_key, key = _host_key_ok(pinned)
        return reach, host_key, [_fail(Check.CONNECT, gist, hint), key]
    key = _skip(Check.HOST_KEY, "ssh did not get that far")
    return reach, HostKey.UNCHECKED, [_fail(Check.CONNECT, gist, hint), key]


def _host_key_ok(pinned: bool) -> tuple[HostKey, Finding]:
    if pinned:
        return HostKey.PINNED, _ok(Check.HOST_KEY, "pinned in the machines line, and it matches")
    return HostKey.NOT_PINNED, _ok(
        Check.HOST_KEY, "not pinned in the machines line; ssh's known_hosts accepted it"
    )


def _pinned_fingerprint(pinned_key: str | None) -> str:
    try:
        return key_fingerprint(decode_host_key(pinned_key or "").decode())
    except (ValueError, UnicodeDecodeError):
        return "a key that does not parse"


def _serve_findings(host: str, observed: Observed) -> list[Finding]:
    noise = observed.probe.noise.strip()
    shell_hint = _SHELL_HINT.format(host=host)
    quiet = _ok(Check.SHELL, "prints nothing on stdout")
    if observed.noisy_greeting:
        noisy = _fail(Check.SHELL, f"noisy shell: {observed.serve_error}", shell_hint)
        return [_skip(Check.SERVE, "the remote shell spoke first"), noisy]
    if observed.serve_error is not None:
        serve_ = _fail(Check.SERVE, observed.serve_error, _SERVE_HINT.format(host=host))
        shell = quiet if observed.probe.sections and not noise else _skip(Check.SHELL, "no session")
        return [serve_, shell]
    ms = "" if observed.handshake_ms is None else f", handshake {observed.handshake_ms:.0f} ms"
    serve_ = _ok(Check.SERVE, f"nix-store --serve --write: protocol {observed.serve_protocol}{ms}")
    if noise:
        return [serve_, _warn(Check.SHELL, f"the shell printed {noise[:200]!r}", shell_hint)]
    return [serve_, quiet]


def _section(observed: Observed, name: str) -> tuple[str | None, str]:
    """(the section's text if its command succeeded, else None; why it did not)."""
    section = observed.probe.sections.get(name)
    if section is not None and section.status == 0:
        return section.text, ""
    if observed.probe.error:
        return None, observed.probe.error
    if section is None:
        return None, "no answer"
    return None, section.text.strip()[:300] or f"exit status {section.status}"


def systems_finding(machine: Machine, settings: RemoteSettings) -> Finding:
    """Warn when the machines line claims a system the builder does not build."""
    missing = frozenset(machine.systems) - settings.platforms
    own = f"system {settings.system}, extra-platforms {_names(settings.extra_platforms)}"
    if missing:
        return _warn(
            Check.SYSTEMS,
            f"the machines line claims {_names(missing)}, which the builder does not build ({own})",
            "Such builds would fail there: fix field 2 of the machines line, or "
            "extra-platforms in the builder's nix.conf.",
        )
    return _ok(Check.SYSTEMS, f"{_names(machine.systems)} (builder: {own})")


def features_finding(machine: Machine, settings: RemoteSettings) -> Finding:
    """Warn when the machines line claims a feature the builder's Nix does not have."""
    claimed = machine.system_features
    if missing := claimed - settings.system_features:
        return _warn(
            Check.FEATURES,
            f"the machines line claims {_names(missing)}, which the builder's system-features "
            f"lack ({_names(settings.system_features)})",
            "A build needing them would fail there: fix fields 6-7 of the machines line, or "
            "system-features in the builder's nix.conf.",
        )
    return _ok(Check.FEATURES, f"{_names(claimed)} (builder: {_names(settings.system_features)})")


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def _store_finding(observed: Observed, host: str, settings: RemoteSettings | None) -> Finding:
    error = observed.write_error
    if not observed.write_tried:
        return _skip(Check.STORE, "no serve session")
    if error is None:
        return _ok(Check.STORE, "writable: a test path was added and deleted")
    if any(word in error for word in _UNTRUSTED):
        return untrusted_finding(host, error, settings.trusted_users if settings else None)
    return _fail(Check.STORE, f"cannot add a path to the store: {error}")


def untrusted_finding(host: str, error: str, trusted_users: tuple[str, ...] | None) -> Finding:
    """The builder refuses unsigned paths: the ssh user (``user@`` of `host`, if given) is
    not in its ``trusted-users`` (`trusted_users`, as the builder's Nix says, if known). Nix's
    own hook then fails the build too: inputs are copied unsigned, and an untrusted user may
    not build input-addressed derivations."""
    user, at, hostname = host.rpartition("@")
    now = f" (now: trusted-users = {' '.join(trusted_users)})" if trusted_users else ""
    if at:
        message = f"the builder refuses unsigned paths from {user}, who is not in its trusted-users"
        wanted = " ".join(dict.fromkeys((*(trusted_users or ("root",)), user)))
        hint = (
            f"On {hostname}, set trusted-users = {wanted} in /etc/nix/nix.conf{now} and"
            " restart its nix-daemon; or log in as root."
        )
    else:
        message = "the builder refuses unsigned paths from the ssh user (not in trusted-users)"
        hint = (
            f"On {hostname}, add the user ssh logs in as (see: ssh -G {hostname} | grep '^user')"
            f" to trusted-users in /etc/nix/nix.conf{now} and restart its nix-daemon; or log in"
            " as root."
        )
    return _fail(Check.STORE, f"{message}: {error}", hint)


def disk_finding(space: DiskSpace) -> Finding:
    """OK; a warning below `LOW_DISK_BYTES` free; a failure below `FULL_DISK_BYTES`."""
    text = f"{render_bytes(space.free_bytes)} free of {render_bytes(space.size_bytes)}"
    text += f" on {space.mount}"
    hint = "Free space there (nix-collect-garbage on the builder) or give it a larger disk."
    if space.free_bytes < FULL_DISK_BYTES:
        return _fail(Check.DISK, f"disk full: {text}", hint)
    if space.free_bytes < LOW_DISK_BYTES:
        return _warn(Check.DISK, f"low disk space: {text}", hint)
    return _ok(Check.DISK, text)


def load_finding(observed: Observed) -> Finding:
    """What the hook's load probe learns there: a warning when it cannot tell everything
    (the hook then counts its own slots for what is missing, like build-remote)."""
    report = read_report(observed.probe)
    if report.problem is None:
        assert report.load_per_core is not None  # noqa: S101 - a whole report has them all
        assert report.mem_available is not None  # noqa: S101
        return _ok(
            Check.LOAD,
            f"{report.os}: load {report.load_per_core:.2f}/core, {report.running_builds} builds"
            f" running, {render_bytes(report.mem_available)} memory free",
        )
    return _warn(
        Check.LOAD,
        f"no full load report ({report.os or 'unknown system'}): {report.problem}",
        "nixdist counts its own slots there for what it cannot see, as build-remote does.",
    )


def render_bytes(count: int) -> str:
    """``1.5 GiB``: binary units with one decimal (bytes as a whole number)."""
    if count < 1024:  # noqa: PLR2004 - one KiB
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":  # noqa: PLR2004 - the next unit
            break
    return f"{value:.1f} {unit}"


def assess_builder(
    machine: Machine, host: str, observed: Observed, *, timeout: float
) -> BuilderReport:
    """Every verdict on one builder, from what was observed."""
    reach, host_key, findings = _connect_findings(host, observed, machine, timeout)
    report = BuilderReport(
        uri=machine.uri, host=host, source=machine.source, reach=reach, host_key=host_key
    )
    if reach is not Reach.CONNECTED:
        rest = [_skip(check, "cannot connect") for check in BUILDER_CHECKS[2:]]
        return dataclasses.replace(report, findings=(*findings, *rest))
    findings += _serve_findings(host, observed)
    version, settings, space = None, None, None
    text, why = _section(observed, "version")
    try:
        version = parse_nix_version(text) if text is not None else None
    except ParseError as err:
        why = str(err)
    findings.append(
        _ok(Check.NIX, f"Nix {version}") if version else _warn(Check.NIX, f"no version: {why}")
    )
    text, why = _section(observed, "config")
    try:
        settings = parse_show_config(text) if text is not None else None
    except ParseError as err:
        why = str(err)
    if settings is None:
        why = f"cannot read the builder's settings (nix show-config): {why}"
        findings += [_warn(Check.SYSTEMS, why), _skip(Check.FEATURES, "settings unknown")]
    else:
        findings += [systems_finding(machine, settings), features_finding(machine, settings)]
    findings.append(_store_finding(observed, host, settings))
    text, why = _section(observed, "df")
    try:
        space = parse_df(text) if text is not None else None
    except ParseError as err:
        why = str(err)
    findings.append(disk_finding(space) if space else _warn(Check.DISK, f"df failed: {why}"))
    findings.append(load_finding(observed))
    return dataclasses.replace(
        report,
        connect_ms=observed.connect_ms,
        handshake_ms=observed.handshake_ms,
        serve_protocol=observed.serve_protocol,
        nix_version=version,
        system=settings.system if settings else None,
        extra_platforms=tuple(sorted(settings.extra_platforms)) if settings else (),
        system_features=tuple(sorted(settings.system_features)) if settings else (),
        store_free_bytes=space.free_bytes if space else None,
        store_size_bytes=space.size_bytes if space else None,
        findings=tuple(findings),
    )


def unusable(machine: Machine, reach: Reach, message: str, hint: str = "") -> BuilderReport:
    """A machine that cannot even be tried (not ssh://, a bad line)."""
    rest = [_skip(check, f"{reach}") for check in BUILDER_CHECKS[1:]]
    return BuilderReport(
        uri=machine.uri,
        host=machine.uri,
        source=machine.source,
        reach=reach,
        host_key=HostKey.UNCHECKED,
        findings=(_fail(Check.CONNECT, message, hint), *rest),
    )


def report_to_json(report: CheckReport) -> dict[str, object]:
    """The report as JSON-ready data (``nixdist check --json``): every field of the
    dataclasses, plus each builder's ``status`` and ``usable`` and the overall ``ok``."""
    return {
        "ok": report.ok,
        "machines": report.machines_origin,
        "local": [dataclasses.asdict(f) for f in report.local],
        "builders": [
            {"status": b.status, "usable": b.usable, "verdict": verdict(b), **dataclasses.asdict(b)}
            for b in report.builders
        ],
    }
