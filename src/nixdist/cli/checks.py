"""What `nixdist check` finds out, as values: each builder's health, and this host's setup.

Click-free, so that a dashboard can run the same checks; `nixdist.cli.check` only renders the
`CheckReport`. Each check gives a `Finding` (ok / warn / fail / skip, a message in words, a
hint). A builder is *usable* unless one of its checks failed; warnings keep it usable.

Per builder (`check_builders`), in order; a check that cannot run after a failure is skipped:

- **connect**: a fresh ssh control master, started exactly as the hook starts one
  (``NIX_SSHOPTS``, field 3 key, field 8 pinning, ``BatchMode``, ``ConnectTimeout``) but in a
  private temporary directory, so it tests a new connection, not one the hook left running.
  Its time is ssh's connect plus authentication. A failure is put in words from ssh's own
  stderr (`classify_ssh_error`): unreachable, timed out, authentication refused, host key
  mismatch, host key unknown.
- **host key**: pinned in field 8 and matching / not pinned (known_hosts accepted it) /
  mismatch, with the fingerprints pinned and sent.
- **serve** and **shell**: ``nix-store --serve --write`` over that master (`ServeStore`): the
  greeting's time and the negotiated protocol version. A remote shell that prints on stdout
  breaks the greeting; the message is ServeStore's (the cause of Nix's "serialised integer …
  is too big").
- **nix**: ``nix-store --version``. **systems** / **features**: the builder's own ``system``,
  ``extra-platforms`` and ``system-features`` (``nix show-config --json``) must cover what its
  machines line claims, else a warning (such builds would fail there).
- **store**: a tiny unsigned input-addressed path with a random name is added over serve
  (command 9, as the hook sends inputs) and deleted right after. This proves the store is
  writable *and* that the builder takes unsigned paths from this user (``trusted-users``).
- **disk**: free space on the store's filesystem (``df -Pk``): a warning below
  `LOW_DISK_BYTES`, a failure below `FULL_DISK_BYTES`.

The builder-side commands run in one session as a ``sh -c`` script whose sections are framed
by marker lines (`render_probe_script`, `parse_probe_output`): a noisy shell cannot garble
them, and what precedes the first marker is the shell's chatter.

This host (`local_findings`): ``build-hook`` runs nixdist (``…/nixdist-hook`` or ``…/nixdist
hook``); Nix's ``builders`` lists a machine; the ``current-load`` directory (slot locks) is
writable by whoever runs the hook; the user is root or in ``trusted-users`` (a nix-daemon
ignores an untrusted user's ``--builders`` and ``--option build-hook``).

Builders are checked in parallel threads: a dead one costs one timeout, not one per builder.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import grp
import hashlib
import json
import os
import posixpath
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError, ParseError, ProtocolError, TransportError
from nixdist.model import nixbase32
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.machines import decode_host_key, machines_from_env_and_setting, parse_machines
from nixdist.model.nixconf import DEFAULT_CONF_DIR, load_nix_conf, nix_settings
from nixdist.model.path_info import PathInfo
from nixdist.model.store_path import STORE_DIR, StorePath
from nixdist.protocol import serve
from nixdist.state.config import host_system, read_config_file
from nixdist.state.slots import default_current_load_dir
from nixdist.store.serve import ServeStore
from nixdist.transport.openssh import ControlMasters, ssh_environment, target_for_machine
from nixdist.wire.nar import Contents, Regular, encode_nar
from nixdist.wire.primitives import encode_u64

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from nixdist.model.machines import Machine
    from nixdist.model.nixconf import NixConf
    from nixdist.transport.openssh import SshTarget

DEFAULT_TIMEOUT_S: Final = 10.0
LOW_DISK_BYTES: Final = 1024**3
"""Less free space than this on a builder's store filesystem is a warning."""
FULL_DISK_BYTES: Final = 100 * 1024**2
"""Less than this makes the builder unusable: builds would fail there."""
PROBE_MARKER: Final = "@@nixdist-check"
WRITE_TEST_NAME: Final = "nixdist-check-write-test"
_MASTER_PERSIST_S: Final = 60  # a master orphaned by a killed check ends on its own


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
    BUILD_HOOK = "build-hook"
    BUILDERS = "builders"
    CURRENT_LOAD = "current-load"
    TRUSTED = "trusted"


BUILDER_CHECKS: Final = tuple(Check)[:9]


class Reach(enum.StrEnum):
    """Whether ssh got through, and if not, why."""

    CONNECTED = "connected"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed out"
    AUTH_REFUSED = "authentication refused"
    HOST_KEY_MISMATCH = "host key mismatch"
    HOST_KEY_UNKNOWN = "host key unknown"
    SSH_FAILED = "ssh failed"
    UNSUPPORTED = "unsupported"  # not an ssh:// machine
    BAD_LINE = "bad machines line"


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
# Parsers of what builders print; pure


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSpace:
    size_bytes: int
    free_bytes: int
    mount: str


_DF_LINE: Final = re.compile(r"^(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(.+)$")
_NIX_VERSION: Final = re.compile(r"\(Nix\)\s+(\S+)")


def parse_df(text: str) -> DiskSpace:
    """The first filesystem line of ``df -Pk`` output (sizes in KiB)."""
    for line in text.splitlines():
        if match := _DF_LINE.match(line.strip()):
            size, avail = int(match[2]) * 1024, int(match[4]) * 1024
            return DiskSpace(size_bytes=size, free_bytes=avail, mount=match[6])
    raise ParseError(f"no filesystem line in df's output: {text.strip()[:200]!r}")


def parse_nix_version(text: str) -> str:
    """``nix-store (Nix) 2.8.0`` → ``2.8.0``."""
    if match := _NIX_VERSION.search(text):
        return match[1]
    raise ParseError(f"not a Nix version: {text.strip()[:200]!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteSettings:
    """What a builder's own Nix says it can build."""

    system: str
    extra_platforms: frozenset[str]
    system_features: frozenset[str]

    @property
    def platforms(self) -> frozenset[str]:
        return self.extra_platforms | {self.system}


def parse_show_config(text: str) -> RemoteSettings:
    """``nix show-config --json``: ``{name: {"value": v, …}}`` (Nix 2.4+) or ``{name: v}``;
    lists as JSON lists or space-separated strings. Lines before the JSON (merged stderr
    warnings) are skipped."""
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("{")), None)
    try:
        data = json.loads(line) if line is not None else None
    except ValueError as err:
        raise ParseError(f"show-config printed bad JSON: {err}") from err
    if not isinstance(data, dict):
        raise ParseError(f"show-config printed no JSON object: {text.strip()[:200]!r}")

    def value(name: str) -> object:
        item = data.get(name)
        return item.get("value") if isinstance(item, dict) else item

    def words(name: str) -> frozenset[str]:
        item = value(name)
        if isinstance(item, str):
            return frozenset(item.split())
        return frozenset(str(x) for x in item) if isinstance(item, list) else frozenset()

    system = value("system")
    if not isinstance(system, str) or not system:
        raise ParseError("show-config has no 'system'")
    return RemoteSettings(
        system=system,
        extra_platforms=words("extra-platforms"),
        system_features=words("system-features"),
    )


def key_fingerprint(public_key_line: str) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a ``<type> <base64> [comment]`` key line."""
    fields = public_key_line.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (IndexError, ValueError) as err:
        raise ParseError(f"not an OpenSSH public key: {public_key_line[:80]!r}") from err
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------------------------------
# ssh's words (pure)

_ADVICE: Final = re.compile(
    r"@+|@ .* @|Warning: Permanently added .*|IT IS POSSIBLE .*|Someone could be .*|"
    r"It is also possible .*|Please contact .*|Add correct host key .*|Offending .*|"
    r"remove with:|ssh-keygen -f .*|The fingerprint for .*|SHA256:\S+"
)
_FINGERPRINT: Final = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_UNREACHABLE: Final = (
    "connection refused",
    "could not resolve hostname",
    "name or service not known",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "connection reset",
    "connection closed by",
    "kex_exchange_identification",
)


def classify_ssh_error(text: str, *, pinned: bool) -> Reach:
    """Why ssh could not connect, from what it printed.

    `pinned`: the machines line pins a host key; then "no host key is known" (the builder
    offers no key of the pinned type) is a mismatch too.
    """
    low = text.lower()
    if "remote host identification has changed" in low or "has changed and you" in low:
        return Reach.HOST_KEY_MISMATCH
    if "host key verification failed" in low or "host key is known for" in low:
        return Reach.HOST_KEY_MISMATCH if pinned else Reach.HOST_KEY_UNKNOWN
    if "permission denied" in low or "too many authentication failures" in low:
        return Reach.AUTH_REFUSED
    if "timed out" in low or "no answer within" in low:
        return Reach.TIMED_OUT
    if any(word in low for word in _UNREACHABLE):
        return Reach.UNREACHABLE
    return Reach.SSH_FAILED


def ssh_gist(text: str) -> str:
    """ssh's stderr without banners and advice, on one line."""
    kept = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("cannot connect to '"):  # ControlMasters' prefix
            line = line.partition("': ")[2]
        line = line.removeprefix("ssh: ")
        if line and not _ADVICE.fullmatch(line):
            kept.append(line)
    joined = ""
    for line in kept:
        joined += (" " if joined.endswith((".", ":")) else "; ") + line if joined else line
    return joined or text.strip()


# ---------------------------------------------------------------------------------------
# The probe script (pure): builder-side commands in one session, framed by marker lines


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    status: int
    text: str  # stdout and stderr of the section's command


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeOutput:
    """What the probe script printed: chatter before the first marker, then each section."""

    noise: str = ""
    sections: Mapping[str, Section] = field(default_factory=dict)
    error: str = ""  # the session itself failed (timeout, ssh died)


def remote_programs(remote_program: str) -> tuple[str, str]:
    """``nix-store`` and ``nix`` on the builder: beside ``remote-program`` if it is a path."""
    if "/" in remote_program:
        return remote_program, posixpath.join(posixpath.dirname(remote_program), "nix")
    return remote_program, "nix"


def render_probe_script(
    *, nix_store: str, nix: str, store_dir: str = STORE_DIR, delete: str | None = None
) -> str:
    """A POSIX sh script printing sections ``version``, ``config``, ``df`` (and ``delete``
    with a path to delete), each between ``begin NAME`` and ``end NAME STATUS`` markers."""
    q = shlex.quote
    sections = [
        ("version", f"{q(nix_store)} --version"),
        (
            "config",
            (
                f"{q(nix)} --extra-experimental-features nix-command show-config --json "
                f"2>/dev/null || {q(nix)} show-config --json"
            ),
        ),
        ("df", f"df -Pk {q(store_dir)}"),
    ]
    if delete is not None:
        sections.append(("delete", f"{q(nix_store)} --delete {q(delete)}"))
    return "".join(
        f"printf '\\n{PROBE_MARKER} begin {name}\\n'; {{ {command} ; }} 2>&1; "
        f"printf '\\n{PROBE_MARKER} end {name} %s\\n' \"$?\"\n"
        for name, command in sections
    )


_MARKER: Final = re.compile(rf"{re.escape(PROBE_MARKER)} (begin|end) (\w+)(?: (\d+))?")


def parse_probe_output(text: str) -> ProbeOutput:
    """Split the probe script's output into chatter and sections; a section without its end
    marker (cut short) is dropped."""
    noise: list[str] = []
    sections: dict[str, Section] = {}
    current: tuple[str, list[str]] | None = None
    started = False
    for line in text.splitlines():
        match = _MARKER.fullmatch(line)
        if match is None:
            if current is not None:
                current[1].append(line)
            elif not started:
                noise.append(line)
        elif match[1] == "begin":
            started, current = True, (match[2], [])
        elif current is not None and current[0] == match[2]:
            text_ = "\n".join(current[1]).strip()
            sections[match[2]] = Section(status=int(match[3] or 1), text=text_)
            current = None
    return ProbeOutput(noise="\n".join(noise).strip(), sections=sections)


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
    probe: ProbeOutput = field(default_factory=ProbeOutput)


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
        if sent := _FINGERPRINT.search(error):
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
    noise = observed.probe.noise
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
    return None, section.text[:300] or f"exit status {section.status}"


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


def _store_finding(observed: Observed) -> Finding:
    error = observed.write_error
    if not observed.write_tried:
        return _skip(Check.STORE, "no serve session")
    if error is None:
        return _ok(Check.STORE, "writable: a test path was added and deleted")
    if any(word in error for word in _UNTRUSTED):
        return _fail(
            Check.STORE,
            f"the builder refuses unsigned paths from this user: {error}",
            "Add the ssh user to trusted-users in the builder's nix.conf (or log in as root).",
        )
    return _fail(Check.STORE, f"cannot add a path to the store: {error}")


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
    findings.append(_store_finding(observed))
    text, why = _section(observed, "df")
    try:
        space = parse_df(text) if text is not None else None
    except ParseError as err:
        why = str(err)
    findings.append(disk_finding(space) if space else _warn(Check.DISK, f"df failed: {why}"))
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


def _unusable(machine: Machine, reach: Reach, message: str, hint: str = "") -> BuilderReport:
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


# ---------------------------------------------------------------------------------------
# Talking to a builder (I/O)


@contextlib.contextmanager
def _watchdog(store: ServeStore, seconds: float) -> Iterator[threading.Event]:
    """Kill `store`'s session when the block lasts longer than `seconds`; the event says so."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        store.channel.kill()

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
        store = ServeStore.open_ssh(target, masters, environ)
    except serve.ServeGreetingError as err:
        worker = err.received.startswith(encode_u64(serve.WORKER_MAGIC_2))
        return Observed(
            serve_error=str(err), noisy_greeting=bool(err.received) and not worker
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
            except (TransportError, ProtocolError) as err:
                error = f"no answer within {timeout:g} s" if fired.is_set() else str(err)
    finally:
        store.close()
    observed = Observed(
        handshake_ms=handshake_ms,
        serve_protocol=serve.format_version(store.version),
        write_tried=True,
        write_error=error,
    )
    return observed, None if error else str(info.path)


def _probe(
    target: SshTarget,
    masters: ControlMasters,
    environ: Mapping[str, str],
    *,
    timeout: float,
    delete: str | None,
) -> ProbeOutput:
    nix_store, nix = remote_programs(target.remote_program)
    script = render_probe_script(nix_store=nix_store, nix=nix, delete=delete)
    argv = masters.command_argv(target, shlex.join(["sh", "-c", script]))
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=ssh_environment(environ),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeOutput(error=f"no answer within {timeout:g} s")
    output = parse_probe_output(done.stdout.decode("utf-8", "replace"))
    if not output.sections:
        said = done.stderr.decode("utf-8", "replace").strip()
        return dataclasses.replace(output, error=said or f"ssh exited {done.returncode}")
    return output


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
        probe = _probe(target, masters, environ, timeout=timeout, delete=added)
    finally:
        masters.stop_master(target)
    return dataclasses.replace(observed, connect_ms=connect_ms, probe=probe)


def _target(machine: Machine, environ: Mapping[str, str]) -> SshTarget | BuilderReport:
    """The ssh target of `machine`, or the report on a machine that cannot be tried."""
    if machine.scheme != "ssh":
        message = f"nixdist speaks ssh:// only; the hook skips {machine.uri}"
        return _unusable(machine, Reach.UNSUPPORTED, message, "Use an ssh:// URI.")
    try:
        target = target_for_machine(machine, environ)
        decode_host_key(target.public_host_key or "").decode()
    except (ConfigError, ValueError, UnicodeDecodeError) as err:
        return _unusable(machine, Reach.BAD_LINE, f"bad machines line: {err}")
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
# This host


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalFacts:
    """What the local verdicts look at (`gather_local_facts` reads them from this host)."""

    build_hook: str  # "" when unset
    build_hook_origin: str = ""  # file:line of the setting
    build_hook_runnable: bool = False
    hook_suggestion: str = "/path/to/nixdist-hook"
    builders_origin: str = ""  # "builders = …" or "NIX_REMOTE_SYSTEMS=…"
    builders_count: int | None = None  # None: Nix's configuration could not be read
    builders_error: str = ""
    machines_file: str | None = None  # --machines
    current_load: str = ""
    current_load_writable: bool = False
    user: str = "root"
    is_root: bool = False
    groups: frozenset[str] = frozenset()
    trusted_users: tuple[str, ...] = ("root",)
    uses_daemon: bool = False


def hook_is_nixdist(value: str) -> bool:
    """``build-hook`` runs nixdist: ``…/nixdist-hook``, or ``…/nixdist hook``."""
    words = value.split()
    program = posixpath.basename(words[0]) if words else ""
    return program == "nixdist-hook" or (program == "nixdist" and words[1:2] == ["hook"])


def is_trusted(user: str, groups: frozenset[str], trusted_users: Iterable[str]) -> bool:
    """Nix's rule: ``*``, the user, or ``@group`` for one of its groups is in trusted-users."""
    return any(
        entry in {"*", user} or (entry.startswith("@") and entry[1:] in groups)
        for entry in trusted_users
    )


def local_findings(facts: LocalFacts) -> tuple[Finding, ...]:
    """The verdicts on this host."""
    return (
        _build_hook_finding(facts),
        _builders_finding(facts),
        _current_load_finding(facts),
        _trusted_finding(facts),
    )


def _build_hook_finding(facts: LocalFacts) -> Finding:
    where = f" ({facts.build_hook_origin})" if facts.build_hook_origin else ""
    fix = f"Set build-hook = {facts.hook_suggestion} in /etc/nix/nix.conf."
    if not facts.build_hook:
        return _warn(Check.BUILD_HOOK, "not set: Nix uses its own build-remote, not nixdist", fix)
    if not hook_is_nixdist(facts.build_hook):
        return _warn(Check.BUILD_HOOK, f"{facts.build_hook}{where} is not nixdist", fix)
    if not facts.build_hook_runnable:
        message = f"{facts.build_hook}{where}: not an executable file, Nix cannot start it"
        return _fail(Check.BUILD_HOOK, message, fix)
    return _ok(Check.BUILD_HOOK, f"{facts.build_hook}{where}")


def _builders_finding(facts: LocalFacts) -> Finding:
    count = facts.builders_count
    if count is None:
        return _fail(Check.BUILDERS, facts.builders_error)
    if count:
        return _ok(
            Check.BUILDERS, f"{count} machine{'' if count == 1 else 's'} ({facts.builders_origin})"
        )
    hint = "List machines in the builders setting or in /etc/nix/machines."
    if facts.machines_file is not None:
        message = f"Nix itself has none ({facts.builders_origin}); checking {facts.machines_file}"
        return _warn(Check.BUILDERS, message, hint)
    return _fail(Check.BUILDERS, f"no builders: {facts.builders_origin} lists no machine", hint)


def _current_load_finding(facts: LocalFacts) -> Finding:
    if facts.current_load_writable:
        return _ok(Check.CURRENT_LOAD, f"{facts.current_load} is writable")
    if facts.uses_daemon and not facts.is_root:
        return _ok(Check.CURRENT_LOAD, f"{facts.current_load}: the nix-daemon runs the hook")
    return _fail(
        Check.CURRENT_LOAD,
        f"{facts.current_load} is not writable: the hook cannot take build slots",
        "Run Nix as root or through the nix-daemon, or set NIX_CURRENT_LOAD.",
    )


def _trusted_finding(facts: LocalFacts) -> Finding:
    trusted = " ".join(facts.trusted_users)
    if facts.is_root:
        return _ok(Check.TRUSTED, "running as root")
    if is_trusted(facts.user, facts.groups, facts.trusted_users):
        return _ok(Check.TRUSTED, f"{facts.user} is in trusted-users ({trusted})")
    return _warn(
        Check.TRUSTED,
        f"{facts.user} is not in trusted-users ({trusted}): a nix-daemon ignores your "
        "--builders and --option build-hook and uses its own nix.conf",
        f"Add {facts.user} to trusted-users in /etc/nix/nix.conf if you need them.",
    )


# ---------------------------------------------------------------------------------------
# Gathering the facts of this host, with I/O


@dataclass(frozen=True, slots=True, kw_only=True)
class NixView:
    """Nix's settings on this host, and the machines it would use."""

    conf: NixConf
    machines: tuple[Machine, ...]
    origin: str  # where the machines come from, in words
    system: str


def nix_view(environ: Mapping[str, str]) -> NixView:
    """Nix's configuration, and its machines (``NIX_REMOTE_SYSTEMS``, else ``builders``) as
    `nixdist machines` reads them. ConfigError for a bad file."""
    conf = load_nix_conf(environ, read_file=read_config_file)
    conf_dir = os.path.normpath(environ.get("NIX_CONF_DIR") or DEFAULT_CONF_DIR)
    settings = nix_settings(conf, default_system=host_system(), conf_dir=conf_dir)
    remote_systems = environ.get("NIX_REMOTE_SYSTEMS")
    text = machines_from_env_and_setting(settings.builders, remote_systems)
    if remote_systems is None:
        source, origin = "<builders>", f"builders = {settings.builders}"
    else:
        source, origin = "<NIX_REMOTE_SYSTEMS>", f"NIX_REMOTE_SYSTEMS={remote_systems}"
    machines = parse_machines(
        text, source=source, read_file=read_config_file, default_system=settings.system
    )
    return NixView(conf=conf, machines=machines, origin=origin, system=settings.system)


def read_machines_file(path: str, *, default_system: str) -> tuple[Machine, ...]:
    """The machines in the file `path`; ConfigError when it is missing or malformed."""
    text = read_config_file(path)
    if text is None:
        raise ConfigError("no such file", file=path)
    return parse_machines(
        text, source=path, read_file=read_config_file, default_system=default_system
    )


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
