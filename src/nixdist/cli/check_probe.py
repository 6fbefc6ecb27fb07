"""What `nixdist check` reads from builders and from ssh (pure): ``df``, ``nix-store
--version`` and ``nix show-config`` output, ssh's error messages put in words, and the one
builder-side script whose sections are framed by marker lines (`render_probe_script`,
`parse_probe_output`), so that a noisy login shell cannot garble them."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nixdist.errors import ParseError
from nixdist.model.store_path import STORE_DIR
from nixdist.transport.probe import PROBE_SCRIPT as LOAD_PROBE_SCRIPT

if TYPE_CHECKING:
    from collections.abc import Mapping


PROBE_MARKER: Final = "@@nixdist-check"

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
    #: Its ``trusted-users``, in order; None when show-config did not say.
    trusted_users: tuple[str, ...] | None = None

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

    def listed(name: str) -> tuple[str, ...] | None:
        item = value(name)
        if isinstance(item, str):
            return tuple(item.split())
        return tuple(str(x) for x in item) if isinstance(item, list) else None

    system = value("system")
    if not isinstance(system, str) or not system:
        raise ParseError("show-config has no 'system'")
    return RemoteSettings(
        system=system,
        extra_platforms=words("extra-platforms"),
        system_features=words("system-features"),
        trusted_users=listed("trusted-users"),
    )


def key_fingerprint(public_key_line: str) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a ``<type> <base64> [comment]`` key line."""
    fields = public_key_line.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (IndexError, ValueError) as err:
        raise ParseError(f"not an OpenSSH public key: {public_key_line[:80]!r}") from err
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


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


# ---------------------------------------------------------------------------------------
# ssh's words (pure)

_ADVICE: Final = re.compile(
    r"@+|@ .* @|Warning: Permanently added .*|IT IS POSSIBLE .*|Someone could be .*|"
    r"It is also possible .*|Please contact .*|Add correct host key .*|Offending .*|"
    r"remove with:|ssh-keygen -f .*|The fingerprint for .*|SHA256:\S+"
)
FINGERPRINT: Final = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
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
    """``nix-store`` and ``nix`` on the builder: beside ``remote-program`` (its first word:
    ``nix-store`` for ``ssh://``, ``nix-daemon`` for ``ssh-ng://``) if it is a path."""
    program = (remote_program.split() or ["nix-store"])[0]
    if "/" in program:
        directory = posixpath.dirname(program)
        return posixpath.join(directory, "nix-store"), posixpath.join(directory, "nix")
    return "nix-store", "nix"


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
        # The hook's own load probe, as it sees the builder (in a subshell: its variables).
        ("load", f"(\n{LOAD_PROBE_SCRIPT.rstrip()}\n)"),
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
