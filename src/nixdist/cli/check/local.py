"""The verdicts on this host (`nixdist check`'s first part): is nixdist Nix's build hook, does
Nix have builders, can the hook write Nix's current-load directory, does the daemon trust
this user. Pure, like `nixdist.cli.check.verdicts`: `nixdist.cli.check.observe` gathers the
facts.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixdist.cli.check.verdicts import Check, Finding, _fail, _ok, _warn

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalFacts:
    """What the local verdicts look at (`gather_local_facts` reads them from this host)."""

    build_hook: str  # "" when unset
    build_hook_origin: str = ""  # file:line of the setting
    #: The value Nix itself says it uses (``nix config show``), None when it cannot tell.
    effective_build_hook: str | None = None
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
    effective = facts.effective_build_hook
    if effective is not None and not hook_is_nixdist(effective):
        return _fail(
            Check.BUILD_HOOK,
            f"{facts.build_hook}{where} is ignored: Nix uses {effective} (Nix 2.25 to 2.33 read"
            " build-hook from nix.conf too early, NixOS/nix#15083)",
            f"Give it in nix-daemon's environment: NIX_CONFIG='build-hook = {facts.build_hook}'"
            " (a systemd drop-in: Environment=...), or pass --option build-hook; or use Nix"
            " 2.34 or later.",
        )
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
