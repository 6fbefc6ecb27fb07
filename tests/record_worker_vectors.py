"""Record the worker-protocol vectors in tests/vectors/worker/ from real Nix hooks and daemons.

Run as root (``make worker-vectors``): it starts a farm of two builders, Nix 2.8 and Nix 2.34
(their Debian root filesystems, `nixdist.farm.rootfs`), listed as ``ssh-ng://`` with a
``remote-program`` that runs ``nix-daemon`` between two ``tee``s, and builds with each
version's own hook (``build-remote``) from a client of the same version
(`nixdist farm client`). Every ``nix-daemon --stdio`` session the hooks open is kept: the
bytes the hook sent (``c2s.bin``) and the daemon's (``s2c.bin``).

Each session's ``.json`` says what the bytes mean, never from nixdist's codecs: the daemon's
Nix version (``nix-daemon --version``), the derivation and its inputs (``nix-store -q``), the
operations in order (read from ``c2s.bin`` by `OpCursor`, a small hand-written decoder that
aborts on anything it does not expect, cross-checked against the derivation Nix instantiated),
the path info of each output as the builder reports it (``nix-store -q --hash --size
--references --deriver``), whether the build succeeded (nix-build's exit status), lines the
build printed (written by the expression), and the error Nix showed (its stderr).

Sessions (``<daemon version>-<case>``): ``leaf`` (a derivation without inputs), ``top`` (two
outputs, one input already on the builder), ``fail`` (the builder exits 3), and on 2.34
``refused`` (a daemon run with ``--force-untrusted`` refusing an unsigned input).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NIXDIST = Path(sys.executable).with_name("nixdist")
DEFAULT_OUT = REPO / "tests" / "vectors" / "worker"
REC_DIR = "/var/tmp/nixdist-worker-rec"
SALT = "wv1"
DAEMONS = {"w28": "2.8", "w234": "2.34"}
OWN_HOOK = {"2.8": "/usr/libexec/nix/build-remote", "2.34": "/usr/bin/nix __build-remote"}
UNTRUSTING = "--extra-experimental-features daemon-trust-override --force-untrusted"

TEE_DAEMON = f"""#!/bin/sh
d={REC_DIR}/sessions/$(date +%s%N)-$$
mkdir -p "$d"
tee "$d/c2s" | nix-daemon "$@" | tee "$d/s2c"
"""

EXPR = """\
{ salt, fail ? false }:
let
  leaf = derivation {
    name = "leaf-${salt}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo leaf log ${salt}; echo leaf ${salt} > $out" ];
  };
in derivation {
  name = "top-${salt}${if fail then "-fail" else ""}"; system = builtins.currentSystem;
  builder = "/bin/sh"; outputs = [ "out" "dev" ];
  args = [ "-c" ''
    echo "top log ${salt}"; echo "top stderr ${salt}" >&2
    ${if fail then "echo 'failing on purpose'; exit 3" else ""}
    read x < ${leaf}; echo "$x top" > $out; echo dev > $dev
  '' ];
} // { inherit leaf; }
"""

Json = dict[str, Any]


def run(argv: list[str], *, check: bool = True, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


# ------------------------------------------------------------------------------------------
# A hand-written reader of what a hook sends (only the operations build-remote uses)


class OpCursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        n = self.u64()
        text = self.data[self.pos : self.pos + n].decode()
        self.pos += n + (-n % 8)
        return text

    def strings(self) -> list[str]:
        return [self.string() for _ in range(self.u64())]

    def frames(self) -> int:
        total = 0
        while n := self.u64():
            self.pos += n
            total += n
        return total

    def handshake(self) -> int:
        assert self.u64() == 0x6E697863, "worker magic"
        version = self.u64()
        if version & 0xFF >= 38:
            assert self.strings() == [], "client features"
        assert (self.u64(), self.u64()) == (0, 0), "obsolete handshake words"
        return version

    def op(self) -> Json:
        code = self.u64()
        if code == 31:  # QueryValidPaths
            return {"op": code, "paths": self.strings(), "substitute": self.u64()}
        if code == 44:  # AddMultipleToStore
            repair, dont_check = self.u64(), self.u64()
            return {
                "op": code,
                "repair": repair,
                "dontCheckSigs": dont_check,
                "framed_bytes": self.frames(),
            }
        if code == 36:  # BuildDerivation
            drv = self.string()
            outputs = {}
            for _ in range(self.u64()):
                name = self.string()
                outputs[name] = [self.string(), self.string(), self.string()]
            inputs = self.strings()
            platform, builder, args = self.string(), self.string(), self.strings()
            env = {}
            for _ in range(self.u64()):
                key = self.string()
                env[key] = self.string()
            return {
                "op": code,
                "drv": drv,
                "outputs": outputs,
                "inputSrcs": inputs,
                "platform": platform,
                "builder": builder,
                "args": args,
                "env": env,
                "mode": self.u64(),
            }
        if code in (26, 38):  # QueryPathInfo, NarFromPath
            return {"op": code, "path": self.string()}
        raise AssertionError(f"unexpected operation {code} at offset {self.pos - 8}")


def read_ops(c2s: bytes) -> tuple[int, list[Json]]:
    cursor = OpCursor(c2s)
    version = cursor.handshake()
    ops = []
    while cursor.pos < len(c2s):
        ops.append(cursor.op())
    assert cursor.pos == len(c2s), "trailing bytes"
    return version, ops


# ------------------------------------------------------------------------------------------
# The farm side


@dataclass
class Farm:
    directory: Path

    def nixdist(self, *args: str, check: bool = True) -> str:
        return run([str(NIXDIST), "farm", *args, "--dir", str(self.directory)], check=check)

    def ssh(self, builder: str, command: str, *, stdin: str | None = None) -> str:
        argv = ["ssh", "-F", str(self.directory / "ssh_config"), f"rw-{builder}", command]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
        return done.stdout

    def ssh_bytes(self, builder: str, command: str) -> bytes:
        argv = ["ssh", "-F", str(self.directory / "ssh_config"), f"rw-{builder}", command]
        return subprocess.run(argv, capture_output=True, check=True).stdout

    def client(self, version: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        full = [
            str(NIXDIST),
            "farm",
            "client",
            "--dir",
            str(self.directory),
            "--nix",
            version,
            "--",
            *argv,
        ]
        env = {**os.environ, "NIX_SSHOPTS": f"-F {self.directory / 'ssh_config'}"}
        return subprocess.run(full, capture_output=True, text=True, check=False, cwd=cwd, env=env)

    def machine(self, builder: str, program: str) -> str:
        line = next(
            line
            for line in (self.directory / "machines").read_text().splitlines()
            if line.startswith(f"ssh://rw-{builder} ")
        )
        uri, rest = line.split(" ", 1)
        query = f"remote-program={program.replace(' ', '%20')}"
        return f"ssh-ng{uri[3:]}?{query} {rest}"


def path_facts(farm: Farm, builder: str, path: str) -> Json:
    q = f"nix-store -q --hash {path}; nix-store -q --size {path}; nix-store -q --deriver {path}"
    hash_, size, deriver = farm.ssh(builder, q).split()
    references = farm.ssh(builder, f"nix-store -q --references {path}").split()
    return {
        "narHash": hash_,
        "narSize": int(size),
        "deriver": deriver,
        "references": sorted(references),
    }


@dataclass
class Case:
    """One nix-build through the own hook, and the sessions its daemon saw."""

    name: str
    salt: str
    extra: list[str]
    done: subprocess.CompletedProcess[str]
    drv: str
    leaf: str
    sessions: list[tuple[bytes, bytes]]


def run_case(farm: Farm, builder: str, version: str, case: str, work: Path) -> Case:
    salt = f"{SALT}-{version}-{case}"
    extra = ["--arg", "fail", "true"] if case == "fail" else []
    flags = UNTRUSTING if case == "refused" else ""
    farm.ssh(builder, f"rm -rf {REC_DIR}/sessions")
    instantiate = ["nix-instantiate", "expr.nix", "--argstr", "salt", salt]
    if case == "refused":  # the input is built here first: unsigned, input-addressed
        argv = ["nix-build", "expr.nix", "-A", "leaf", "--argstr", "salt", salt]
        local = farm.client(version, [*argv, "--no-out-link", "--option", "builders", ""], work)
        assert local.returncode == 0, local.stderr
    machine = farm.machine(builder, f"{REC_DIR}/tee-daemon {flags}".strip())
    argv = ["nix-build", "expr.nix", "--argstr", "salt", salt, *extra, "--no-out-link", "-j0"]
    argv += ["--builders", machine, "--option", "build-hook", OWN_HOOK[version]]
    done = farm.client(version, argv, work)
    drv = farm.client(version, [*instantiate, *extra], work).stdout.strip()
    leaf = farm.client(version, [*instantiate, "-A", "leaf"], work).stdout.strip()
    listing = farm.ssh(builder, f"ls {REC_DIR}/sessions").split()
    sessions = []
    for session in sorted(listing):
        base = f"{REC_DIR}/sessions/{session}"
        c2s = farm.ssh_bytes(builder, f"cat {base}/c2s")
        s2c = farm.ssh_bytes(builder, f"cat {base}/s2c")
        sessions.append((c2s, s2c))
    return Case(case, salt, extra, done, drv, leaf, sessions)


def session_name(case: Case, ops: list[Json]) -> str | None:
    """Which session this is: the leaf's or the top's build, or the refused upload."""
    built = [op["drv"] for op in ops if op["op"] == 36]
    if case.name == "refused":
        return None if built else "refused"
    kind = {case.drv: "top", case.leaf: "leaf"}.get(built[0] if built else "")
    if case.name == "fail":
        return "fail" if kind == "top" else None
    return kind


def session_facts(
    farm: Farm, builder: str, version: str, case: Case, *, ops: list[Json], name: str, work: Path
) -> Json:
    built = [op["drv"] for op in ops if op["op"] == 36]
    drv_path = built[0] if built else case.drv
    logs = {"leaf": [f"leaf log {case.salt}"], "refused": []}
    facts: Json = {
        "drv": drv_path,
        "drv_text": farm.client(version, ["cat", drv_path], work).stdout,
        "ops": ops,
        "succeeded": case.done.returncode == 0,
        "log": logs.get(name, [f"top log {case.salt}", f"top stderr {case.salt}"]),
        "outputs": {
            op["path"]: path_facts(farm, builder, op["path"])
            for op in ops
            if op["op"] == 26 and case.done.returncode == 0
        },
    }
    if name in ("top", "fail"):
        out = farm.client(version, ["nix-store", "-q", "--outputs", case.leaf], work)
        facts["inputs"] = out.stdout.split()
    if name in ("fail", "refused"):
        facts["stderr"] = case.done.stderr
    return facts


def record(farm: Farm, builder: str, version: str, work: Path, out: Path) -> None:
    install = f"mkdir -p {REC_DIR} && cat > {REC_DIR}/tee-daemon && chmod +x {REC_DIR}/tee-daemon"
    farm.ssh(builder, install, stdin=TEE_DAEMON)
    daemon = farm.ssh(builder, "nix-daemon --version").split()[-1]
    client = farm.client(version, ["nix-build", "--version"], work).stdout.split()[-1]
    cases = ["build", "fail"] + ([] if version == "2.8" else ["refused"])
    for case in (run_case(farm, builder, version, c, work) for c in cases):
        for c2s, s2c in case.sessions:
            client_version, ops = read_ops(c2s)
            name = session_name(case, ops)
            if name is None:
                continue
            facts = session_facts(farm, builder, version, case, ops=ops, name=name, work=work)
            facts |= {"daemon_nix": daemon, "client_nix": client, "client_version": client_version}
            stem = out / f"{version}-{name}"
            Path(f"{stem}.c2s.bin").write_bytes(c2s)
            Path(f"{stem}.s2c.bin").write_bytes(s2c)
            Path(f"{stem}.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
            print(f"recorded {stem.name}: ops {[op['op'] for op in ops]}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nixdist-worker-rec-") as tmp:
        farm = Farm(Path(tmp) / "farm")
        work = Path(tmp) / "work"
        work.mkdir()
        (work / "expr.nix").write_text(EXPR)
        builders = [f"--builder={name}:nix={version}" for name, version in DAEMONS.items()]
        farm.nixdist("up", "--alias-prefix", "rw-", *builders)
        try:
            for builder, version in DAEMONS.items():
                record(farm, builder, version, work, args.out)
        finally:
            farm.nixdist("down", check=False)
            for version in DAEMONS.values():
                farm.client(version, ["true"], work)
            shutil.rmtree(farm.directory / "clients", ignore_errors=True)


if __name__ == "__main__":
    main()
