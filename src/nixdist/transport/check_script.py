"""What ``nixdist check`` asks a builder's shell, and parsers of what Nix prints there.

One session runs one script of sections (`nixdist.transport.remote_script`), so a noisy
login shell cannot garble the answers and what precedes the first section is its chatter:

    version   nix-store --version                      (`parse_nix_version`)
    config    nix show-config --json                   (`parse_show_config`)
    os … df   the hook's own load probe, as the hook sees the builder
              (`nixdist.transport.probe`: its ``df`` is check's disk space too)
    delete    nix-store --delete of check's test path, when it was added

Its words are constants and `shlex.quote`-d program names and store paths.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from nixdist.errors import ParseError
from nixdist.transport.probe import PROBE_SCRIPT
from nixdist.transport.remote_script import frame, run_script

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget
    from nixdist.transport.remote_script import ScriptOutput

#: The most the check script may print: ``show-config --json`` describes every setting.
MAX_CHECK_OUTPUT: Final = 1024 * 1024
_NIX_VERSION: Final = re.compile(r"\(Nix\)\s+(\S+)")


def remote_programs(remote_program: str) -> tuple[str, str]:
    """``nix-store`` and ``nix`` on the builder: beside ``remote-program`` (its first word:
    ``nix-store`` for ``ssh://``, ``nix-daemon`` for ``ssh-ng://``) if it is a path."""
    program = (remote_program.split() or ["nix-store"])[0]
    if "/" in program:
        directory = posixpath.dirname(program)
        return posixpath.join(directory, "nix-store"), posixpath.join(directory, "nix")
    return "nix-store", "nix"


def render_check_script(*, nix_store: str, nix: str, delete: str | None = None) -> str:
    """The sections ``version``, ``config``, the load probe's, and ``delete`` with a store
    path to delete."""
    q = shlex.quote
    config = (
        f"{q(nix)} --extra-experimental-features nix-command show-config --json "
        f"2>/dev/null || {q(nix)} show-config --json"
    )
    script = frame("version", f"{q(nix_store)} --version") + frame("config", config)
    script += PROBE_SCRIPT
    if delete is not None:
        script += frame("delete", f"{q(nix_store)} --delete {q(delete)}")
    return script


def run_check_script(
    target: SshTarget,
    masters: ControlMasters,
    environ: Mapping[str, str],
    *,
    timeout: float,
    delete: str | None = None,
) -> ScriptOutput:
    """The check script's answer from `target`, within `timeout` seconds. Raises
    `TransportError` only when the builder cannot be reached."""
    nix_store, nix = remote_programs(target.remote_program)
    script = render_check_script(nix_store=nix_store, nix=nix, delete=delete)
    return run_script(
        target,
        masters,
        environ,
        script,
        what="the check script",
        timeout=timeout,
        limit=MAX_CHECK_OUTPUT,
    )


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
