"""A Nix client of a given version against the farm: ``nixdist farm client --nix 2.34 -- CMD``.

The command runs in a mount namespace of its own, chrooted into the version's root filesystem
(`nixdist.farm.rootfs`, mounted as in `nixdist.farm.launch.chroot_argv`), with::

    /nix          <- <farm>/clients/<version>/nix          its own store, kept between calls
    /etc/nix      <- <farm>/clients/<version>/etc-nix      nix.conf (render_client_nix_conf)
                     (etc-nix-daemon with --daemon)
    /proc /dev /sys /tmp /root, the farm directory, the nixdist checkout, $NIXDIST_STATE_DIR,
    /var/lib/nixdist and the current directory: the host's, at the same paths

The caller's environment passes through, with ``PATH`` set to the root filesystem's standard
PATH behind ``<farm>/clients/<version>/bin``, which holds ``nixdist-hook``: our hook run by
the root filesystem's python3 with the checkout's ``src`` on ``PYTHONPATH``, and ``nixdist``
(for ``nixdist build`` as a client of that Nix): the CLI, the same way, with the venv's
site-packages (click and rich are pure Python) after ``src``. ``NIX_REMOTE`` is
removed (set to ``daemon`` with --daemon). The command runs in the current directory.

With ``--daemon`` a ``nix-daemon`` is started in the same namespace first (its log is
``<farm>/clients/<version>/nix-daemon.log``), the command runs with ``NIX_REMOTE=daemon`` and
the daemon is killed when it ends. Daemon-mode clients of one version take turns (a lock),
since they share one store. The exit status is the command's; 125 when the client could not
be set up. The command is exec'ed, so stdin/stdout/stderr and signals reach it directly
(with --daemon a shell waits for it, and a Ctrl-C still reaches it through the terminal's
process group).

**Sandbox-capable clients** (``--sandbox``, ``client_argv(sandbox=True)``). A chrooted
process may not create user namespaces, so a plain client's Nix cannot sandbox a build; and
Nix builds in a chroot store (``--store /tmp/x``, or a builder given as
``ssh://localhost?remote-store=/tmp/x``) only sandboxed, as root without build users in a user
namespace of its own. With `sandbox` the client's root is made with ``pivot_root`` instead
(`nixdist.farm.launch.PIVOT_SCRIPT`), with the same mounts, so such builds run. Its
``nix.conf`` is the same (``sandbox = false`` concerns the client's own store only: Nix
sandboxes chroot stores regardless). Only what is in a build's closure is in its sandbox, so
its builder must be a store path, e.g. a static busybox added to the store.

`client_argv`'s `conf` appends lines to the client's ``nix.conf`` (a ``post-build-hook``,
say). The file is rewritten by every call, so clients of one farm directory and version that
run at the same time must agree on them.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nixdist.farm import launch, render
from nixdist.farm.errors import FarmError
from nixdist.farm.rootfs import ROOTFS_PATH, ensure_rootfs

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Runs inside the chroot with --daemon: ``<log> <lock> CMD...``.
DAEMON_SCRIPT: Final = """\
log=$1 lock=$2
shift 2
exec 9>>"$lock"
if ! flock -w 600 9; then
  echo "nixdist farm client: waited 600 s for $lock (another --daemon client)" >&2
  exit 125
fi
sock=/nix/var/nix/daemon-socket/socket
rm -f "$sock"
setpriv --pdeathsig KILL -- nix-daemon >>"$log" 2>&1 </dev/null 9>&- &
daemon=$!
n=0
until [ -S "$sock" ]; do
  if ! kill -0 "$daemon" 2>/dev/null; then
    echo "nixdist farm client: nix-daemon exited at start; see $log" >&2
    exit 125
  fi
  n=$((n + 1))
  if [ "$n" -gt 600 ]; then
    echo "nixdist farm client: nix-daemon made no $sock in 30 s; see $log" >&2
    kill -KILL "$daemon"
    exit 125
  fi
  sleep 0.05
done
trap : INT TERM HUP QUIT
status=0
NIX_REMOTE=daemon "$@" 9>&- || status=$?
kill -KILL "$daemon" 2>/dev/null || :
wait "$daemon" 2>/dev/null || :
exit "$status"
"""
_DAEMON_ARGV0: Final = "nixdist-client-daemon"
DEFAULT_STATE_DIR: Final = "/var/lib/nixdist"


def client_dir(farm_dir: Path, version: str) -> Path:
    return farm_dir / "clients" / version


def client_store_dir(farm_dir: Path, version: str) -> Path:
    """The physical directory a client of `version` sees as ``/nix/store``."""
    return client_dir(farm_dir, version) / "nix" / "store"


def reset_client(farm_dir: Path, version: str) -> None:
    """Empty the client's store (its ``/nix``); the next command starts with a new one."""
    shutil.rmtree(client_dir(farm_dir, version) / "nix", ignore_errors=True)


def source_dirs() -> tuple[Path, Path]:
    """(the directory on ``PYTHONPATH`` for nixdist, the checkout to bind: its parent if src)."""
    src = Path(__file__).resolve().parents[2]  # <src>/nixdist/farm/client.py
    return src, (src.parent if src.name == "src" else src)


def _prepare(base: Path, *, daemon: bool, conf: Sequence[str]) -> Path:
    """The client's directories, its nix.conf and its nixdist-hook; where its /etc/nix is."""
    etc_nix = base / ("etc-nix-daemon" if daemon else "etc-nix")
    for sub in ("nix/store", "stage", "bin"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    src, _checkout = source_dirs()
    nix_conf = render.render_client_nix_conf(daemon=daemon)
    _write(etc_nix / "nix.conf", nix_conf + "".join(f"{line}\n" for line in conf))
    hook = render.render_hook_wrapper(python="/usr/bin/python3", src_dir=str(src))
    _write(base / "bin" / "nixdist-hook", hook, mode=0o755)
    libraries = sysconfig.get_paths()["purelib"]  # the venv's site-packages
    cli = render.render_cli_wrapper(
        python="/usr/bin/python3", src_dir=str(src), libraries=libraries
    )
    _write(base / "bin" / "nixdist", cli, mode=0o755)
    Path(DEFAULT_STATE_DIR).mkdir(parents=True, exist_ok=True)
    return etc_nix


def _client_mounts(
    farm_dir: Path, base: Path, etc_nix: Path, here: Path, environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """What the client sees: its own /nix and /etc/nix, and this host's paths it needs."""
    _src, checkout = source_dirs()
    same_path = ["/tmp", "/root", str(farm_dir), str(checkout), DEFAULT_STATE_DIR]  # noqa: S108
    state_env = environ.get("NIXDIST_STATE_DIR")
    if state_env:
        same_path.append(state_env)
    same_path.append(str(here))
    return [
        (str(base / "nix"), "/nix"),
        (str(etc_nix), "/etc/nix"),
        ("/proc", "/proc"),
        ("rbind:/dev", "/dev"),
        ("rbind:/sys", "/sys"),
        *((p, p) for p in same_path if _bindable(p)),
    ]


def client_argv(
    farm_dir: Path,
    version: str,
    command: Sequence[str],
    *,
    daemon: bool = False,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    sandbox: bool = False,
    conf: Sequence[str] = (),
) -> list[str]:
    """The command line running `command` as a client of Nix `version` (module docstring).

    Prepares the client's directories (and builds the root filesystem if needed). Run the
    result with the environment the command should see. With `sandbox` the client may use
    Nix's build sandbox (chroot stores); `conf` are more ``nix.conf`` lines.
    """
    if not command:
        raise ValueError("client_argv needs a command")
    if os.geteuid() != 0:
        raise FarmError("a farm client needs root (mount namespaces, chroot)")
    environ = os.environ if environ is None else environ
    rootfs = ensure_rootfs(version)
    base = client_dir(farm_dir, version)
    etc_nix = _prepare(base, daemon=daemon, conf=conf)
    here = Path(cwd) if cwd is not None else Path.cwd()
    mounts = _client_mounts(farm_dir, base, etc_nix, here, environ)
    inner = [
        "/usr/bin/env",
        "-C",
        str(here),
        "-u",
        "NIX_REMOTE",
        f"PATH={base / 'bin'}:{ROOTFS_PATH}",
    ]
    if daemon:
        log = base / "nix-daemon.log"
        inner += ["/bin/sh", "-c", DAEMON_SCRIPT, _DAEMON_ARGV0, str(log), str(base / "lock")]
    return launch.chroot_argv(
        stage=base / "stage",
        rootfs=rootfs,
        mounts=mounts,
        command=[*inner, *command],
        pivot=sandbox,
    )


def _bindable(path: str) -> bool:
    """A host path that can be shown at its own path: it exists and covers none of the root."""
    p = Path(path)
    if not p.is_absolute() or not p.is_dir() or p == Path("/"):
        return False
    return not any(p.is_relative_to(t) for t in ("/nix", "/etc/nix", "/proc", "/dev", "/sys"))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
