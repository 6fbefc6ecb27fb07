"""ssh's words, for ``nixdist check`` (pure): why a connection failed (`classify_ssh_error`,
`Reach`), ssh's stderr without its banners (`ssh_gist`) and OpenSSH's key fingerprints. What
builders print is read in `nixdist.transport.check_script` and `nixdist.transport.probe`."""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from typing import Final

from nixdist.errors import ParseError


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
