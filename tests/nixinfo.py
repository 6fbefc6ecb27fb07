"""What the installed Nix is, and how to read its output whose format changed between releases.

Importable from any test as ``import nixinfo`` (pytest's ``pythonpath`` includes tests/).

Tests compare with what the Nix on this machine (or on a farm builder) prints, never with one
release's constants. Where a format changed, the readers here take each shape by what the
output is; the version (`nix_version`) is for the few changes that leave no tell in the output.

========================  ===========================  ====================================
what                      Nix 2.8                      later (first release with it)
========================  ===========================  ====================================
``nix path-info --json``  list of ``{"path": …}``      object keyed by path, null for an
                                                       invalid path (2.19)
showing a derivation      ``nix show-derivation``      ``nix derivation show`` (2.15; the
                                                       old name stays as an alias)
 its JSON: top level      no ``name``                  ``name`` (2.15)
 ``inputDrvs`` values     list of output names         ``{"outputs": […], "dynamicOutputs":
                                                       {…}}`` (2.18)
 a fixed output           ``hashAlgo: "r:sha256"``     ``method: "nar"``, ``hashAlgo:
                                                       "sha256"`` (2.23)
-j0 with nothing to run   "unable to start any         "Unable to start any build;",
                          build; …" on one line        indented over lines (2.21)
========================  ===========================  ====================================
"""

from __future__ import annotations

import functools
import json
import re
import struct
import subprocess
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

NIX_COMMAND: Final = ["nix", "--extra-experimental-features", "nix-command"]

_VERSION: Final = re.compile(r"\(Nix\)\s+(\d+(?:\.\d+)*)")


def parse_version(text: str) -> tuple[int, ...]:
    """``nix (Nix) 2.26.3`` (what any Nix command prints for --version) → ``(2, 26, 3)``."""
    match = _VERSION.search(text)
    if match is None:
        raise ValueError(f"not a Nix version: {text.strip()[:200]!r}")
    return tuple(int(part) for part in match[1].split("."))


def version_text(text: str) -> str:
    """``nix-store (Nix) 2.26.3`` → ``2.26.3``: the version exactly as Nix prints it."""
    match = re.search(r"\(Nix\)\s+(\S+)", text)
    if match is None:
        raise ValueError(f"not a Nix version: {text.strip()[:200]!r}")
    return match[1]


@functools.cache
def nix_version() -> tuple[int, ...]:
    """The installed Nix's version, from ``nix --version``."""
    out = subprocess.run(["nix", "--version"], capture_output=True, text=True, check=True)
    return parse_version(out.stdout)


# ---------------------------------------------------------------------------------------
# nix path-info --json


def parse_path_info_json(text: str) -> dict[str, dict[str, object] | None]:
    """``nix path-info --json`` output of either shape, keyed by store path; None (2.19+) or
    ``{"valid": false}`` (before) for a path that is not valid."""
    data = json.loads(text)
    if isinstance(data, list):  # before 2.19: [{"path": …, …}, …]
        return {info["path"]: info for info in data}
    if isinstance(data, dict):  # 2.19+: {path: {…} | null}
        return data
    raise ValueError(f"path-info printed neither a list nor an object: {text[:200]!r}")


def path_info(
    paths: Sequence[str], *, env: Mapping[str, str] | None = None
) -> dict[str, dict[str, object] | None]:
    """``nix path-info --json PATHS`` from the installed Nix, keyed by path."""
    out = subprocess.run(
        [*NIX_COMMAND, "path-info", "--json", *paths],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return parse_path_info_json(out.stdout)


def ultimate(paths: Sequence[str], *, env: Mapping[str, str] | None = None) -> list[str]:
    """Those of `paths` that this store marks "ultimate" (built here, not received)."""
    infos = path_info(paths, env=env)
    return [path for path in paths if (info := infos[path]) is not None and info.get("ultimate")]


# ---------------------------------------------------------------------------------------
# Showing a derivation as JSON

_FILE_INGESTION_PREFIX: Final = {"flat": "", "nar": "r:", "text": "text:", "git": "git:"}


def show_derivation(args: Sequence[str], *, nix: Sequence[str] = NIX_COMMAND) -> str:
    """The installed Nix's JSON for derivations: ``nix derivation show ARGS``, or on a Nix
    without that command (before 2.15) ``nix show-derivation ARGS``."""
    new = subprocess.run(
        [*nix, "derivation", "show", *args], capture_output=True, text=True, check=False
    )
    if new.returncode == 0:
        return new.stdout
    if "'derivation' is not a recognised command" not in new.stderr:
        raise subprocess.CalledProcessError(new.returncode, new.args, new.stdout, new.stderr)
    old = subprocess.run(
        [*nix, "show-derivation", *args], capture_output=True, text=True, check=True
    )
    return old.stdout


def as_show_derivation_2_8(shown: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """Nix's derivation JSON of either shape, in the shape Nix 2.8 prints it.

    The later shape carries nothing the 2.8 one lacks for the derivations nixdist models;
    every extra field is checked against what 2.8's shape implies (``name`` against the
    path, ``dynamicOutputs`` empty, ``method`` folded back into ``hashAlgo``), and anything
    else new raises `ValueError`, so a comparison with the result can still fail.
    """
    result: dict[str, dict[str, object]] = {}
    for drv_path, value in shown.items():
        drv = dict(_object(drv_path, value))
        if "name" in drv:
            name = drv.pop("name")
            # /nix/store/<32 chars>-<name>.drv
            expected = drv_path.rsplit("/", 1)[-1][33:].removesuffix(".drv")
            if name != expected:
                raise ValueError(f"{drv_path}: name {name!r}, its path says {expected!r}")
        drv["inputDrvs"] = {
            path: _input_outputs(drv_path, path, outputs)
            for path, outputs in _object(drv_path, drv["inputDrvs"]).items()
        }
        drv["outputs"] = {
            name: _output_2_8(drv_path, name, _object(drv_path, output))
            for name, output in _object(drv_path, drv["outputs"]).items()
        }
        result[drv_path] = drv
    return result


def _object(where: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected an object, got {value!r}")
    return value


def _input_outputs(drv_path: str, input_drv: str, value: object) -> object:
    if isinstance(value, list):  # 2.8
        return value
    entry = _object(f"{drv_path}: input {input_drv}", value)
    if set(entry) != {"outputs", "dynamicOutputs"} or entry["dynamicOutputs"] != {}:
        raise ValueError(f"{drv_path}: input {input_drv} has more than outputs: {entry!r}")
    return entry["outputs"]


def _output_2_8(drv_path: str, name: str, output: dict[str, object]) -> dict[str, object]:
    if "method" not in output:  # 2.8, or an input-addressed output
        return output
    entry = dict(output)
    method = entry.pop("method")
    prefix = _FILE_INGESTION_PREFIX.get(str(method))
    if prefix is None or not isinstance(entry.get("hashAlgo"), str):
        raise ValueError(f"{drv_path}: output {name}: unknown method or algo: {output!r}")
    entry["hashAlgo"] = f"{prefix}{entry['hashAlgo']}"
    return entry


# ---------------------------------------------------------------------------------------
# Settings as Nix applies them


def effective_settings(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Every setting's value as the installed Nix applies it in `env` (``nix config show
    --json``, or ``nix show-config --json`` before 2.20): ``{name: value}``."""
    out = subprocess.run(
        [*NIX_COMMAND, "config", "show", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0 and "'config' is not a recognised command" in out.stderr:
        out = subprocess.run(
            [*NIX_COMMAND, "show-config", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, out.args, out.stdout, out.stderr)
    data = json.loads(out.stdout)
    return {name: item["value"] if isinstance(item, dict) else item for name, item in data.items()}


def effective_build_hook(env: Mapping[str, str] | None = None) -> str:
    """The build hook command line Nix would start in `env`, space-separated (a list setting
    from 2.17, a string before)."""
    value = effective_settings(env)["build-hook"]
    return " ".join(value) if isinstance(value, list) else str(value)


# ---------------------------------------------------------------------------------------
# Nix's errors

_ERROR_START: Final = re.compile(r"^error:", re.MULTILINE)


def last_error(stderr: str) -> str:
    """The last ``error: …`` Nix printed, with its whitespace collapsed (2.20+ indents and
    wraps what 2.8 printed on one line)."""
    starts = [m.start() for m in _ERROR_START.finditer(stderr)]
    if not starts:
        raise ValueError(f"no error in: {stderr[-2000:]!r}")
    return " ".join(stderr[starts[-1] :].split())


def reference_error(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
    """The error the installed Nix itself prints for `argv` (which must fail), as
    `last_error` gives it: what a test's own run must print in the same situation."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode == 0:
        raise ValueError(f"{' '.join(argv)} succeeded; it should fail")
    return last_error(result.stderr)


# ---------------------------------------------------------------------------------------
# The serve protocol version a `nix-store --serve` speaks

SERVE_MAGIC_1: Final = 0x390C9DEB  # client hello
SERVE_MAGIC_2: Final = 0x5452EECB  # server hello


def serve_protocol_version(run: Callable[[Sequence[str], bytes], bytes]) -> str:
    """``major.minor`` of the serve protocol that ``nix-store --serve`` answers with.

    `run(argv, stdin) -> stdout` runs a command where the Nix in question is (locally, or
    on a farm builder). The client hello offers version 2.0; the server replies with its own
    version, and on end of input it exits.
    """
    hello = struct.pack("<QQ", SERVE_MAGIC_1, 2 << 8)
    reply = run(["nix-store", "--serve"], hello)
    if len(reply) < 16:
        raise ValueError(f"nix-store --serve replied {reply!r}")
    magic, version = struct.unpack_from("<QQ", reply)
    if magic != SERVE_MAGIC_2:
        raise ValueError(f"nix-store --serve replied with magic {magic:#x}")
    return f"{version >> 8}.{version & 0xFF}"
