"""The OpenSSH client, run the way Nix runs it, with one shared control master per builder.

Command lines (nix-protocols.md §3.1, design.md §7)::

    ssh <host> -x -a <NIX_SSHOPTS words> [-i <key>] [host-key pinning] <our defaults>
        -oControlPath=<socket> -oControlMaster=no -- nix-store --serve --write [--store X]

so the user's ``~/.ssh/config`` (ports, users, ProxyJump, keys) applies exactly as with
``build-remote``. ``NIX_SSHOPTS`` is split on whitespace like Nix does, and comes before our
own ``-o`` defaults: for ssh the first value given for an option wins, so the user's choice
beats ours.

**Control masters.** Nix starts a hook process per accepted derivation; each opening its own
SSH connection pays a full handshake. We keep one master per builder (`ControlMasters`), started
detached — its own session, stdin and stdout on /dev/null, stderr to a log file in the state
directory — so it never holds Nix's pipes (Nix waits for EOF on the hook's stderr) and survives
Nix killing the hook's process group. ``ControlPersist`` ends it after a quiet while. A flock
per socket keeps concurrent hooks from starting two masters for one builder, and a socket
nobody listens on any more is removed and replaced.

**Host keys.** A machine line's base64 public host key (field 8) is pinned: it is written to a
known-hosts file of its own, matched through ``HostKeyAlias`` (so the port or ``HostName`` of an
ssh-config alias does not matter) with ``StrictHostKeyChecking=yes``.

**localhost.** As in Nix 2.8, ``ssh://localhost`` runs the remote command locally without
ssh (handy for tests together with ``?remote-store=``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.errors import ConfigError, TransportError
from nixdist.model.machines import decode_host_key
from nixdist.transport.fs import private_dir
from nixdist.transport.locks import flock_within

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from nixdist.model.machines import Machine

SSH: Final = "ssh"
DEFAULT_PERSIST_S: Final = 600
DEFAULT_CONNECT_TIMEOUT_S: Final = 15
KEEPALIVE_COUNT: Final = 3
_PINNED_ALIAS: Final = "nixdist-pinned-host"
# sun_path holds 108 bytes; ssh adds ".XXXXXXXXXXXXXXXX" to the path while binding.
_MAX_SOCKET_PATH: Final = 107 - 17


@dataclass(frozen=True, slots=True, kw_only=True)
class SshTarget:
    """Where and how to reach one builder's store: ``nix-store --serve`` (``ssh://``) or
    ``nix-daemon --stdio`` (``ssh-ng://``)."""

    host: str  # the URI authority, verbatim: ``user@host`` or an ssh-config alias
    scheme: str = "ssh"  # or "ssh-ng"
    ssh_key: str | None = None
    public_host_key: str | None = None  # base64 of an OpenSSH public key line
    compress: bool = False
    remote_program: str = "nix-store"  # a shell word list, as Nix takes it
    remote_store: str | None = None
    extra_opts: tuple[str, ...] = field(default=())  # NIX_SSHOPTS words

    @property
    def is_local(self) -> bool:
        return self.host == "localhost"

    @property
    def speaks_daemon(self) -> bool:
        """Whether the store speaks the worker protocol (``ssh-ng://``), not serve."""
        return self.scheme == "ssh-ng"

    def remote_command(self) -> str:
        """What runs on the builder, as Nix runs it: the program's words as given (Nix splits
        ``remote-program`` on spaces), then the arguments, quoted."""
        words = ["--stdio"] if self.speaks_daemon else ["--serve", "--write"]
        if self.remote_store:
            words += ["--store", self.remote_store]
        program = " ".join(shlex.quote(word) for word in self.remote_program.split())
        return " ".join([program, *(shlex.quote(word) for word in words)])

    def key(self) -> str:
        """A short stable name for this target, for socket and file names."""
        identity = "\0".join(
            (self.host, self.ssh_key or "", self.public_host_key or "", *self.extra_opts)
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


#: The program each scheme runs on the builder unless ``remote-program`` says otherwise.
DEFAULT_PROGRAM: Final = {"ssh": "nix-store", "ssh-ng": "nix-daemon"}


def target_for_machine(machine: Machine, environ: Mapping[str, str]) -> SshTarget:
    """The ssh target of an ``ssh://`` or ``ssh-ng://`` machine, with its URI parameters.

    A machine that is a local store (a path, ``local?root=…``: Nix builds in it in-process)
    is a ``nix-store --serve --write --store URI`` run here without ssh, the store told the
    machine's features as its ``system-features`` (as Nix tells it), so that it builds what
    the machines line says it can.
    """
    if not machine.scheme:
        return SshTarget(host="localhost", remote_store=_with_system_features(machine))
    parsed = urllib.parse.urlsplit(machine.uri)
    if parsed.scheme not in DEFAULT_PROGRAM:
        raise ConfigError(
            f"store URI {machine.uri!r} is neither ssh:// nor ssh-ng://",
            file=machine.source or None,
        )
    params = store_uri_params(parsed.query)
    host = parsed.netloc
    if not host:
        raise ConfigError(f"store URI {machine.uri!r} has no host", file=machine.source or None)
    check_host(host, uri=machine.uri, source=machine.source)
    return SshTarget(
        host=host,
        scheme=parsed.scheme,
        ssh_key=machine.ssh_key or params.get("ssh-key") or None,
        public_host_key=machine.public_host_key or params.get("base64-ssh-public-host-key"),
        compress=params.get("compress", "false") == "true",
        remote_program=params.get("remote-program") or DEFAULT_PROGRAM[parsed.scheme],
        remote_store=params.get("remote-store") or None,
        extra_opts=tuple(environ.get("NIX_SSHOPTS", "").split()),
    )


def store_uri_params(query: str) -> dict[str, str]:
    """A store URI's parameters as Nix decodes them: ``&``-separated ``name=value``, each
    percent-decoded (``+`` stays a plus: Nix is not decoding a form)."""
    params: dict[str, str] = {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name:
            params[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    return params


def _with_system_features(machine: Machine) -> str:
    features = " ".join(sorted(machine.system_features))
    if not features or "system-features=" in machine.uri:
        return machine.uri
    joiner = "&" if "?" in machine.uri else "?"
    return f"{machine.uri}{joiner}system-features={urllib.parse.quote(features)}"


def check_host(host: str, *, uri: str, source: str = "") -> None:
    """Refuse a host that ssh would read as an option (``-oProxyCommand=…``) or that holds
    characters no host name or ssh-config alias has (whitespace, control characters).

    ssh is always run from an argument list, never through a shell, so quotes, ``;`` and
    ``$()`` in a host name reach ssh as plain characters; only a leading ``-`` could change
    what ssh does, as ssh reads options after the destination too.
    """
    name = host.rpartition("@")[2]
    bad = next((c for c in host if c.isspace() or not c.isprintable()), None)
    if host.startswith("-") or name.startswith("-"):
        why = "starts with '-', which ssh would read as an option"
    elif bad is not None:
        why = f"contains {bad!r}"
    else:
        return
    raise ConfigError(f"store URI {uri!r}: host {host!r} {why}", file=source or None)


def ssh_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for ssh: no GUI password prompts (as build-remote does)."""
    env = dict(environ)
    env.pop("DISPLAY", None)
    env.pop("SSH_ASKPASS", None)
    return env


class ControlMasters:
    """One persistent ssh control master per builder, shared by every hook process."""

    def __init__(
        self,
        directory: Path,
        *,
        persist_s: int = DEFAULT_PERSIST_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self._dir = directory  # the state directory's ssh/ (`nixdist.state.paths.ssh_dir`)
        self._persist_s = persist_s
        #: How long reaching a builder may take, ssh's handshake and nix-store's greeting each:
        #: while the hook connects, Nix's whole build loop waits for its answer.
        self.connect_timeout_s = connect_timeout_s

    def socket_path(self, target: SshTarget) -> Path:
        """Where the master for `target` listens.

        In the state directory when the path fits in a Unix socket address; otherwise in a
        private directory under /tmp named after the state directory.
        """
        name = f"{target.key()}.sock"
        if len(os.fsencode(self._dir / name)) <= _MAX_SOCKET_PATH:
            return self._dir / name
        tag = hashlib.sha256(os.fsencode(self._dir)).hexdigest()[:12]
        short = Path("/tmp") / f"nixdist-{os.geteuid()}-{tag}"  # noqa: S108 - private, checked
        return private_dir(short) / name

    def _known_hosts(self, target: SshTarget) -> Path | None:
        if not target.public_host_key:
            return None
        try:
            line = decode_host_key(target.public_host_key).decode().strip()
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"public host key of {target.host}: {err}") from err
        if "\n" in line or "\r" in line:  # one key, never extra known-hosts entries
            raise ConfigError(f"public host key of {target.host}: more than one line")
        path = private_dir(self._dir) / f"{target.key()}.known_hosts"
        text = f"{_PINNED_ALIAS} {line}\n"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    def base_argv(self, target: SshTarget) -> list[str]:
        """``ssh <host> -x -a …``: everything but the control and command parts."""
        argv = [SSH, target.host, "-x", "-a", *target.extra_opts]
        if target.ssh_key:
            argv += ["-i", target.ssh_key]
        known_hosts = self._known_hosts(target)
        if known_hosts is not None:
            argv += [
                f"-oUserKnownHostsFile={known_hosts}",
                f"-oHostKeyAlias={_PINNED_ALIAS}",
                "-oStrictHostKeyChecking=yes",
            ]
        if target.compress:
            argv.append("-C")
        timeout = max(1, round(self.connect_timeout_s))
        # Keep-alives: a builder that stops answering (frozen, cable cut) is given up after
        # about the connect timeout, ending every session over the master with it.
        alive = max(1, round(self.connect_timeout_s / KEEPALIVE_COUNT))
        argv += [
            "-oBatchMode=yes",
            f"-oConnectTimeout={timeout}",
            f"-oServerAliveInterval={alive}",
            f"-oServerAliveCountMax={KEEPALIVE_COUNT}",
        ]
        return argv

    def serve_argv(self, target: SshTarget, *, use_master: bool = True) -> list[str]:
        """The command line that runs ``nix-store --serve --write`` on the builder."""
        return self.command_argv(target, target.remote_command(), use_master=use_master)

    def command_argv(
        self, target: SshTarget, command: str, *, use_master: bool = True
    ) -> list[str]:
        """The command line that runs the shell command `command` on the builder.

        `command` reaches the builder's shell as one argument after ``--``; callers pass
        constants or words quoted with `shlex.quote`, never text from a machines file.
        """
        if target.is_local:
            return ["bash", "-c", command]
        argv = self.base_argv(target)
        if use_master:
            argv += [f"-oControlPath={self.socket_path(target)}", "-oControlMaster=no"]
        return [*argv, "--", command]

    def ensure_master(self, target: SshTarget, environ: Mapping[str, str]) -> bool:
        """Make sure a master for `target` is listening; start one if needed.

        Returns True when a master is ready. Raises TransportError with ssh's own words when
        the master cannot connect (host down, authentication refused, wrong host key).
        """
        if target.is_local:
            return False
        private_dir(self._dir)
        sock = self.socket_path(target)
        if _is_listening(sock):
            return True
        # Another hook starting this master holds the lock for at most its connect timeout.
        bound = 2 * self.connect_timeout_s + 5
        with _flocked(self._dir / f"{target.key()}.lock", timeout_s=bound, what=target.host):
            if _is_listening(sock):
                return True
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            self._start_master(target, environ, sock)
        return True

    def _start_master(self, target: SshTarget, environ: Mapping[str, str], sock: Path) -> None:
        log = self._dir / f"{target.key()}.log"
        argv = [
            *self.base_argv(target),
            "-M",
            "-N",
            f"-oControlPath={sock}",
            f"-oControlPersist={self._persist_s}",
        ]
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=ssh_environment(environ),
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + self.connect_timeout_s + 5
        delay = 0.002
        while time.monotonic() < deadline:
            if _is_listening(sock):
                return
            if proc.poll() is not None and not _is_listening(sock):
                said = log.read_text(errors="replace").strip()
                raise TransportError(
                    f"cannot connect to '{target.host}': {said or f'ssh exited {proc.returncode}'}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        proc.kill()
        raise TransportError(f"cannot connect to '{target.host}': timed out")

    def stop_master(self, target: SshTarget) -> None:
        sock = self.socket_path(target)
        if sock.exists():
            subprocess.run(
                [SSH, "-oControlPath=" + str(sock), "-O", "exit", target.host],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )


def _is_listening(sock: Path) -> bool:
    """Whether a control master accepts connections on `sock` (cheaper than ``ssh -O check``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _flocked(path: Path, *, timeout_s: float, what: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        flock_within(fd, timeout_s=timeout_s, what=f"{path} (the ssh master of '{what}')")
        yield
    finally:
        os.close(fd)
