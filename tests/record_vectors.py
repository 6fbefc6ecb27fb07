"""Record the golden vectors in tests/vectors/ from the real Nix installed on this machine.

Run as root on a machine with Debian's ``nix-bin`` 2.8 (``make vectors``). Every vector is a
pair of exact bytes (``*.bin``) and the meaning of those bytes (``*.json``). The meaning never
comes from nixdist's own codecs: it is what Nix reports (``nix show-derivation``,
``nix-store -q``, ``nix-hash``), the description the recorder used to create the input, or a
small hand-written decoder in this file (`Cursor`) whose results are cross-checked against
what Nix reports. See tests/vectors/README.md for what each file is.

Layout of the work directory (fixed, so that paths that end up in the vectors, such as the
hook and wrapper paths in the settings block, are the same on every run)::

    /tmp/nixdist-record/
        nar/<name>            trees that are dumped with `nix-store --dump`
        nix/*.nix             expressions instantiated for drv/, export/, serve/, hook/
        serve-wrapper         the `remote-program`: records both directions, execs nix-store
        serve-capture/        <ns>-<pid>.c2s / .s2c files written by the wrapper
        spy-<mode>.py         build-hook spies (see SPY_TEMPLATE)
        hook-capture/<mode>/<pid>/  stdin.bin, stderr.bin, meta.json written by a spy
        remote-*/             chroot stores used as the "remote" side of serve sessions

The local store is the real one (root, no daemon). Outputs that must be built again for a
session are deleted first with `nix-store --delete`, so the derivations (and therefore the
store paths in the vectors) stay the same from one recording to the next. Things that do
change between recordings: registration times (serve cmd 9), build start/stop times (serve
cmd 8), and settings that describe the machine (cores, system-features, ...).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "vectors"
WORK = Path("/tmp/nixdist-record")
SYSTEM = "x86_64-linux"
BUILD_REMOTE = "/usr/libexec/nix/build-remote"
NIX_FLAGS = ["--extra-experimental-features", "nix-command ca-derivations"]
NO_SUBST = ["--option", "substituters", ""]
SANDBOX_PATHS = " ".join(p for p in ("/bin", "/usr", "/lib", "/lib64") if Path(p).exists())
INLINE_LIMIT = 4096  # regular files up to this size are stored inline (base64) in NAR json

Json = dict[str, Any]


# ------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"record_vectors: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: list[str],
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> bytes:
    """Run a command, return its stdout; on failure raise with its stderr."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{cmd!r} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout


def run_text(cmd: list[str], **kw: Any) -> str:
    return run(cmd, **kw).decode()


def write_pair(out: Path, name: str, data: bytes, meaning: Json) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.bin").write_bytes(data)
    write_json(out / f"{name}.json", meaning)


def write_json(path: Path, meaning: Json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meaning, indent=2, ensure_ascii=False, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8")


def nar_hash_of(path: str | Path) -> str:
    """`sha256:<nix32>` of the NAR serialisation of `path`, computed by nix-hash."""
    return "sha256:" + run_text(["nix-hash", "--type", "sha256", "--base32", str(path)]).strip()


def to_base16(sha256_nix32: str) -> str:
    digest = sha256_nix32.removeprefix("sha256:")
    return run_text(["nix-hash", "--type", "sha256", "--to-base16", digest]).strip()


def query(flag: str, path: str) -> list[str]:
    return run_text(["nix-store", "-q", flag, path]).split()


def path_facts(path: str) -> Json:
    """What Nix itself reports about a valid path of the local store."""
    nar_hash = query("--hash", path)[0]
    deriver = query("--deriver", path)[0]
    as_drv = ["--derivation"] if path.endswith(".drv") else []  # else it means its outputs
    info = json.loads(
        run_text(["nix", *NIX_FLAGS, "path-info", *NO_SUBST, "--json", *as_drv, path])
    )[0]
    if info["path"] != path:
        raise RuntimeError(f"nix path-info answered for {info['path']}, not {path}")
    return {
        "path": path,
        "references": sorted(query("--references", path)),
        "deriver": "" if deriver == "unknown-deriver" else deriver,
        "narHash": nar_hash,
        "narHash_base16": to_base16(nar_hash),
        "narHash_sri": info["narHash"],
        "narSize": int(query("--size", path)[0]),
        "ca": info.get("ca", ""),
    }


def instantiate(
    expr_file: Path, attr: str | None = None, args: dict[str, str] | None = None
) -> str:
    cmd = ["nix-instantiate", *NIX_FLAGS, str(expr_file)]
    if attr is not None:
        cmd += ["-A", attr]
    for key, value in (args or {}).items():
        cmd += ["--argstr", key, value]
    out = run_text(cmd).split()
    if len(out) != 1:
        raise RuntimeError(f"expected one .drv from {cmd!r}, got {out!r}")
    return out[0]


def show_derivation(drv: str) -> Json:
    shown: Json = json.loads(run_text(["nix", *NIX_FLAGS, "show-derivation", drv]))
    return shown


def outputs_of(drv: str) -> dict[str, str]:
    return {name: o["path"] for name, o in show_derivation(drv)[drv]["outputs"].items()}


def is_valid(path: str) -> bool:
    return (
        subprocess.run(
            ["nix-store", "--check-validity", path], capture_output=True, check=False
        ).returncode
        == 0
    )


def delete_paths(paths: list[str]) -> None:
    """Make outputs we created invalid again so that Nix has to build them."""
    valid = [p for p in paths if is_valid(p)]
    if valid:
        run(["nix-store", "--delete", *valid])
    still = [p for p in paths if is_valid(p)]
    if still:
        raise RuntimeError(f"could not delete {still}; pass --salt to use fresh derivations")


def fresh_dir(path: Path) -> Path:
    if path.exists():
        rmtree(path)
    path.mkdir(parents=True)
    return path


def rmtree(path: Path) -> None:
    def make_writable(func: Any, p: str, _exc: Any) -> None:
        Path(p).parent.chmod(0o700)
        func(p)

    shutil.rmtree(path, onerror=make_writable)


# ------------------------------------------------------------------------------------------
# an independent, minimal decoder for Nix's wire framing (NOT nixdist's codecs)


class EndOfDataError(Exception):
    pass


@dataclass
class Cursor:
    data: bytes
    pos: int = 0

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EndOfDataError(f"need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u64(self) -> int:
        return int.from_bytes(self.raw(8), "little")

    def bytes_(self) -> bytes:
        n = self.u64()
        value = self.raw(n)
        pad = self.raw(-n % 8)
        if pad.strip(b"\0"):
            raise ValueError(f"non-zero padding at {self.pos}")
        return value

    def text(self) -> str:
        return self.bytes_().decode("utf-8")

    def texts(self) -> list[str]:
        return [self.text() for _ in range(self.u64())]

    def token(self, expected: bytes) -> None:
        got = self.bytes_()
        if got != expected:
            raise ValueError(f"expected {expected!r} at {self.pos}, got {got[:40]!r}")

    def nar(self) -> bytes:
        """Skip one NAR by parsing its grammar; return its exact bytes."""
        start = self.pos
        self.token(b"nix-archive-1")
        self._node()
        return self.data[start : self.pos]

    def _node(self) -> None:
        self.token(b"(")
        self.token(b"type")
        kind = self.bytes_()
        if kind == b"regular":
            tag = self.bytes_()
            if tag == b"executable":
                self.token(b"")
                tag = self.bytes_()
            if tag != b"contents":
                raise ValueError(f"bad regular tag {tag!r}")
            self.bytes_()
        elif kind == b"symlink":
            self.token(b"target")
            self.bytes_()
        elif kind == b"directory":
            while True:
                tag = self.bytes_()
                if tag == b")":
                    return
                if tag != b"entry":
                    raise ValueError(f"bad directory tag {tag!r}")
                self.token(b"(")
                self.token(b"name")
                self.bytes_()
                self.token(b"node")
                self._node()
                self.token(b")")
        else:
            raise ValueError(f"bad node type {kind!r}")
        self.token(b")")


def nar_digest(nar: bytes) -> Json:
    return {"nar_size": len(nar), "nar_sha256": hashlib.sha256(nar).hexdigest()}


# ------------------------------------------------------------------------------------------
# nar/: trees created here, dumped by nix-store --dump


def reg(contents: bytes, *, executable: bool = False) -> Json:
    return {"type": "regular", "executable": executable, "contents": contents}


def link(target: str) -> Json:
    return {"type": "symlink", "target": target}


def directory(entries: dict[str, Json]) -> Json:
    return {"type": "directory", "entries": entries}


def pseudo_random(size: int, seed: bytes) -> bytes:
    """Deterministic incompressible bytes: SHA-256 in counter mode."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def nested(depth: int) -> Json:
    """A chain of `depth` directories; every third level also holds a small file."""
    node = reg(b"bottom of a deep tree\n")
    for level in reversed(range(depth)):
        entries = {f"d{level:02d}": node}
        if level % 3 == 0:
            entries[f"file-at-{level}"] = reg(f"level {level}\n".encode())
        node = directory(entries)
    return node


def nar_trees() -> dict[str, tuple[str, Json]]:
    padding_files = {f"size-{n}": reg(bytes(range(65, 65 + n))) for n in range(10)}
    tricky_names = {
        "Zebra": reg(b"upper-case Z sorts before lower-case a\n"),
        "a": reg(b"a\n"),
        "a-b": reg(b"dash sorts before dot\n"),
        "a.b": reg(b"dot\n"),
        "a_b": reg(b"underscore\n"),
        "ab": directory({}),
        "with space": reg(b"space in name\n"),
        "caf\u00e9": reg("caf\u00e9 (NFC, two bytes)\n".encode()),
        "cafe\u0301": reg(b"cafe + combining acute (NFD)\n"),
        "\u65e5\u672c\u8a9e": reg("\u65e5\u672c\u8a9e\n".encode()),
        "\U0001f600-emoji": reg(b"4-byte UTF-8 name\n"),
        "-dash-first": reg(b""),
        ".hidden": reg(b"dot file\n"),
        "...": reg(b"three dots is a legal name\n"),
    }
    tree = directory(
        {
            "bin": directory(
                {
                    "hello": reg(b"#!/bin/sh\necho hello\n", executable=True),
                    "empty-exec": reg(b"", executable=True),
                    "link-to-hello": link("hello"),
                }
            ),
            "empty-file": reg(b""),
            "empty-dir": directory({}),
            "links": directory(
                {
                    "absolute": link("/nix/store/00000000000000000000000000000000-nothing"),
                    "dangling": link("does/not/exist"),
                    "to-dir": link("../bin"),
                    "dot": link("."),
                    "long": link("x" * 300),
                    "unicode": link("\u00e9t\u00e9/\u65e5\u672c"),
                }
            ),
            "names": directory(tricky_names),
            "padding": directory(padding_files),
            "deep": nested(24),
            "binary": reg(bytes(range(256)) * 3),
        }
    )
    return {
        "file": ("a single regular file at the top", reg(b"hello world\n")),
        "file-8-bytes": ("a top-level file whose size needs no padding", reg(b"12345678")),
        "executable": ("a single executable file", reg(b"#!/bin/sh\nexit 0\n", executable=True)),
        "empty-file": ("a single empty file", reg(b"")),
        "empty-dir": ("an empty directory", directory({})),
        "symlink": ("a top-level symlink (dangling)", link("/some/target with space")),
        "tree": (
            (
                "executables, symlinks, empty files and dirs, non-ASCII names, deep nesting, "
                "every padding length"
            ),
            tree,
        ),
        "big": (
            "a 1 MiB + 5 bytes file of deterministic pseudo-random content",
            reg(pseudo_random((1 << 20) + 5, b"nixdist-nar-big")),
        ),
    }


def materialise(path: Path, node: Json) -> None:
    kind = node["type"]
    if kind == "regular":
        path.write_bytes(node["contents"])
        path.chmod(0o755 if node["executable"] else 0o644)
    elif kind == "symlink":
        path.symlink_to(node["target"])
    else:
        path.mkdir()
        for name, child in node["entries"].items():
            materialise(path / name, child)


def describe(node: Json) -> Json:
    """The json form of a tree: entries in NAR order (byte-wise sorted names)."""
    kind = node["type"]
    if kind == "regular":
        contents: bytes = node["contents"]
        out: Json = {"type": "regular", "executable": node["executable"], "size": len(contents)}
        if len(contents) <= INLINE_LIMIT:
            out["contents_base64"] = base64.b64encode(contents).decode()
        else:
            out["sha256"] = hashlib.sha256(contents).hexdigest()
        return out
    if kind == "symlink":
        return {"type": "symlink", "target": node["target"]}
    names = sorted(node["entries"], key=lambda n: n.encode())
    return {
        "type": "directory",
        "entries": [{"name": n, "node": describe(node["entries"][n])} for n in names],
    }


def record_nar(out: Path) -> None:
    base = fresh_dir(WORK / "nar")
    for name, (what, node) in nar_trees().items():
        path = base / name
        materialise(path, node)
        data = run(["nix-store", "--dump", str(path)])
        meaning = {
            "description": what,
            "tree": describe(node),
            "narHash": nar_hash_of(path),
            "narSize": len(data),
        }
        write_pair(out / "nar", name, data, meaning)
        log(f"nar/{name}: {len(data)} bytes")


# ------------------------------------------------------------------------------------------
# drv/: .drv files written by nix-instantiate


FLAT_CONTENT = b"hello fixed output\n"

DRV_EXPR = r"""
{ salt }:
let
  sh = "/bin/sh";
  sys = "x86_64-linux";
  mk = name: attrs: derivation ({ inherit name; system = sys; builder = sh; } // attrs);
  src = builtins.toFile "vec-src-${salt}.txt" "a source file\nwith two lines\n";
  data = ./input-data;
  multi = mk "vec-multi-${salt}" {
    outputs = [ "out" "dev" "lib" "bin" ];
    args = [ "-c" "echo out > $out; echo dev > $dev; echo lib > $lib; echo bin > $bin" ];
  };
  floating = mk "vec-floating-${salt}" {
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    args = [ "-c" "echo floating > $out" ];
  };
in rec {
  simple = mk "vec-simple-${salt}" {
    args = [ "-c" "echo simple > $out" ];
  };
  inherit multi floating;
  fixed-flat = mk "vec-fixed-flat-${salt}" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "@FLAT_SHA256@";
    args = [ "-c" "printf 'hello fixed output\\n' > $out" ];
  };
  fixed-flat-sha1 = mk "vec-fixed-sha1-${salt}" {
    outputHashMode = "flat";
    outputHashAlgo = "sha1";
    outputHash = "@FLAT_SHA1@";
    args = [ "-c" "printf 'hello fixed output\\n' > $out" ];
  };
  fixed-recursive = mk "vec-fixed-rec-${salt}" {
    outputHashMode = "recursive";
    outputHash = "@REC_SRI@";
    args = [ "-c" "printf 'hello fixed output\\n' > $out" ];
  };
  inputs = mk "vec-inputs-${salt}" {
    outputs = [ "out" "doc" ];
    args = [ "-c" "cat $src $data/file.txt > $out; echo ${multi.dev} ${simple} > $doc" ];
    inherit src data;
    dev = multi.dev;
    lib = multi.lib;
    plain = simple;
    requiredSystemFeatures = [ "big-parallel" "kvm" ];
    preferLocalBuild = true;
    allowSubstitutes = false;
  };
  deferred = mk "vec-deferred-${salt}" {
    args = [ "-c" "cat ${floating} > $out" ];
  };
  tricky = mk "vec-tricky-${salt}" {
    args = [ "-c" "echo tricky > $out" "quote\" backslash\\ end" "" "line1\nline2" "tab\there" ];
    quotes = "double \" single ' backtick `";
    backslashes = "one \\ two \\\\ escaped-n \\n end\\";
    newlines = "first\nsecond\n\nfourth\n";
    tabs = "\ta\tb\t";
    cr = "windows\r\nline\rendings";
    unicode = "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 \u00e9";
    aterm = "(\"a\",[\"b\"]),()[]";
    dollar = "\${not interpolated} $HOME";
    empty = "";
    long = builtins.concatStringsSep "" (builtins.genList (i: "0123456789") 50);
    "name with spaces" = "value";
    "name=with=equals" = "value";
  };
  structured = mk "vec-structured-${salt}" {
    __structuredAttrs = true;
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo structured > $out; echo dev > $dev" ];
    requiredSystemFeatures = [ "big-parallel" ];
    number = 42;
    negative = -7;
    flag = true;
    nothing = null;
    list = [ 1 "two" [ 3 ] { four = 4; } ];
    nested = { a = { b = { c = "deep \"quoted\" \\ \n"; }; }; };
    unicode = "\u00e9\U0001f600";
    outputChecks.out.allowedReferences = [ ];
  };
}
"""

DRV_DESCRIPTIONS = {
    "simple": "one output, no inputs",
    "multi": "four outputs (out dev lib bin)",
    "fixed-flat": "fixed-output, flat, sha256 given in base16",
    "fixed-flat-sha1": "fixed-output, flat, sha1",
    "fixed-recursive": "fixed-output, recursive (r:sha256), hash given as SRI",
    "floating": "floating content-addressed (ca-derivations): output path empty",
    "deferred": "input-addressed but depends on a floating CA drv: deferred output path",
    "inputs": "input derivations (one multi-output, using two of its outputs) and input sources "
    "(builtins.toFile and a path literal); requiredSystemFeatures; two outputs",
    "tricky": "args and env values with quotes, backslashes, newlines, tabs, CR, unicode, "
    "ATerm punctuation, an empty value, odd env names",
    "structured": "__structuredAttrs: the env carries __json",
}


def drv_expression(work: Path) -> Path:
    flat_sha256 = hashlib.sha256(FLAT_CONTENT).hexdigest()
    flat_sha1 = hashlib.sha1(FLAT_CONTENT).hexdigest()  # noqa: S324 - Nix supports sha1 FODs
    tmp = work / "flat-output"
    tmp.write_bytes(FLAT_CONTENT)
    rec_b16 = run_text(["nix-hash", "--type", "sha256", str(tmp)]).strip()
    rec_sri = run_text(["nix", *NIX_FLAGS, "hash", "to-sri", "--type", "sha256", rec_b16]).strip()
    (work / "input-data").mkdir()
    (work / "input-data" / "file.txt").write_bytes(b"data from a path literal\n")
    expr = (
        DRV_EXPR.replace("@FLAT_SHA256@", flat_sha256)
        .replace("@FLAT_SHA1@", flat_sha1)
        .replace("@REC_SRI@", rec_sri)
    )
    path = work / "drvs.nix"
    path.write_text(expr, encoding="utf-8")
    return path


def record_drv(out: Path, salt: str) -> None:
    work = fresh_dir(WORK / "drv")
    expr = drv_expression(work)
    for name, what in DRV_DESCRIPTIONS.items():
        drv = instantiate(expr, name, {"salt": salt})
        data = Path(drv).read_bytes()
        shown = show_derivation(drv)
        meaning = {"description": what, "drvPath": drv, "show-derivation": shown}
        write_pair(out / "drv", name, data, meaning)
        log(f"drv/{name}: {len(data)} bytes ({drv})")


# ------------------------------------------------------------------------------------------
# export/: nix-store --export streams

EXPORT_EXPR = r"""
{ salt }:
rec {
  src = builtins.toFile "vec-export-src-${salt}.txt" "exported source\n";
  leaf = derivation {
    name = "vec-export-leaf-${salt}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo leaf > $out" ];
  };
  top = derivation {
    name = "vec-export-top-${salt}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" ''
      mkdir -p $out/bin $out/share
      printf '#!/bin/sh\ncat %s\n' $leaf > $out/bin/show
      chmod +x $out/bin/show
      echo $src > $out/share/src-path
      ln -s $leaf $out/leaf
    '' ];
    inherit leaf src;
    PATH = "/usr/bin:/bin";
  };
}
"""


def build(drv: str, *extra: str) -> dict[str, str]:
    run(["nix-store", "-r", drv, *NO_SUBST, *extra])
    return outputs_of(drv)


def record_export(out: Path, salt: str) -> None:
    work = fresh_dir(WORK / "export")
    expr = work / "export.nix"
    expr.write_text(EXPORT_EXPR, encoding="utf-8")
    args = {"salt": salt}
    src = (
        run_text(
            [
                "nix-instantiate",
                "--eval",
                "--json",
                "-E",
                f'(import {expr} {{ salt = "{salt}"; }}).src',
            ]
        )
        .strip()
        .strip('"')
    )
    # the toFile source becomes valid when the expression is instantiated
    top = build(instantiate(expr, "top", args))["out"]
    closure = run_text(["nix-store", "-qR", top]).split()
    cases: dict[str, tuple[str, list[str]]] = {
        "source": ("a builtins.toFile source: no references, no deriver", [src]),
        "closure": (
            "a built output with references (and the leaf it refers to, plus a source)",
            closure,
        ),
        "empty": ("an export of no paths at all", []),
    }
    for name, (what, paths) in cases.items():
        data = run(["nix-store", "--export", *paths])
        order = export_order(data)
        if sorted(order) != sorted(paths):
            raise RuntimeError(f"export {name}: stream has {order}, asked for {paths}")
        meaning = {"description": what, "paths": [path_facts(p) for p in order]}
        write_pair(out / "export", name, data, meaning)
        log(f"export/{name}: {len(data)} bytes, {len(order)} paths")


def export_order(data: bytes) -> list[str]:
    """Paths in the order they occur in an export stream (hand-decoded, checked against Nix)."""
    cur = Cursor(data)
    paths = []
    while cur.u64() == 1:
        nar = cur.nar()
        if cur.u64() != 0x4558494E:
            raise ValueError("bad export magic")
        path = cur.text()
        facts = path_facts(path)
        if hashlib.sha256(nar).hexdigest() != facts["narHash_base16"]:
            raise ValueError(f"export NAR of {path} does not match nix-store -q --hash")
        if sorted(cur.texts()) != facts["references"] or cur.text() != facts["deriver"]:
            raise ValueError(f"export record of {path} disagrees with nix-store -q")
        if cur.u64() != 0:
            raise ValueError("unexpected signature marker")
        paths.append(path)
    if not cur.at_end():
        raise ValueError("trailing bytes after export stream")
    return paths


# ------------------------------------------------------------------------------------------
# serve/: nix-store --serve sessions with real Nix on both ends

SERVE_WRAPPER = """#!/bin/bash
# remote-program for ssh://localhost?remote-program=...: records one nix-store --serve session.
# Nix 2.8 runs it with `bash -c "<this> --serve --write [--store '<remote-store>']"`.
set -o pipefail
id="$(date +%s%N)-$$"
tee "@DIR@/$id.c2s" | nix-store "$@" --option extra-sandbox-paths '@SANDBOX@' | tee "@DIR@/$id.s2c"
"""


def serve_wrapper() -> Path:
    capture = fresh_dir(WORK / "serve-capture")
    wrapper = WORK / "serve-wrapper"
    wrapper.write_text(
        SERVE_WRAPPER.replace("@DIR@", str(capture)).replace("@SANDBOX@", SANDBOX_PATHS),
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return wrapper


def ssh_uri(wrapper: Path, remote: Path) -> str:
    return f"ssh://localhost?remote-program={wrapper}&remote-store={remote}"


def take_sessions() -> list[tuple[bytes, bytes]]:
    """The sessions the wrapper recorded since the last call, oldest first."""
    capture = WORK / "serve-capture"
    time.sleep(0.5)  # let the tee processes of a finished session write their last bytes
    sessions = []
    for c2s in sorted(capture.glob("*.c2s"), key=lambda p: int(p.stem.split("-")[0])):
        s2c = c2s.with_suffix(".s2c")
        sessions.append((c2s.read_bytes(), s2c.read_bytes()))
        c2s.unlink()
        s2c.unlink()
    return sessions


def decode_derivation(cur: Cursor) -> Json:
    outputs = {}
    for _ in range(cur.u64()):
        name = cur.text()
        outputs[name] = {"path": cur.text(), "hash_algo": cur.text(), "hash": cur.text()}
    drv: Json = {
        "outputs": outputs,
        "input_srcs": cur.texts(),
        "platform": cur.text(),
        "builder": cur.text(),
        "args": cur.texts(),
    }
    env = {}
    for _ in range(cur.u64()):
        key = cur.text()
        env[key] = cur.text()
    drv["env"] = env
    return drv


def decode_build_options(cur: Cursor) -> Json:
    # the server version is 0x207 in these sessions: all fields present
    return {
        "max_silent_time": cur.u64(),
        "build_timeout": cur.u64(),
        "max_log_size": cur.u64(),
        "nr_repeats": cur.u64(),
        "enforce_determinism": cur.u64(),
        "keep_failed": cur.u64(),
    }


def decode_export(cur: Cursor) -> list[Json]:
    records = []
    while cur.u64() == 1:
        record = nar_digest(cur.nar())
        if cur.u64() != 0x4558494E:
            raise ValueError("bad export magic")
        record.update(path=cur.text(), references=cur.texts(), deriver=cur.text())
        if cur.u64() != 0:
            raise ValueError("unexpected signature marker")
        records.append(record)
    return records


def _query_valid_paths(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    request = {"lock": req.u64(), "substitute": req.u64(), "paths": req.texts()}
    return request, {"valid": rep.texts()}


def _query_path_infos(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    request = {"paths": req.texts()}
    infos = []
    while path := rep.text():
        infos.append(
            {
                "path": path,
                "deriver": rep.text(),
                "references": rep.texts(),
                "download_size": rep.u64(),
                "nar_size": rep.u64(),
                "nar_hash": rep.text(),
                "ca": rep.text(),
                "sigs": rep.texts(),
            }
        )
    return request, {"infos": infos}


def _dump_store_path(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    return {"path": req.text()}, nar_digest(rep.nar())


def _import_paths(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    return {"paths": decode_export(req)}, {"result": rep.u64()}


def _export_paths(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    return {"unused": req.u64(), "paths": req.texts()}, {"export": decode_export(rep)}


def _build_paths(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    request = {"targets": req.texts(), "options": decode_build_options(req)}
    reply: Json = {"status": rep.u64()}
    if reply["status"] != 0:
        reply["error_msg"] = rep.text()
    return request, reply


def _query_closure(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    return {"include_outputs": req.u64(), "paths": req.texts()}, {"closure": rep.texts()}


def _build_derivation(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    request = {
        "drv_path": req.text(),
        "derivation": decode_derivation(req),
        "options": decode_build_options(req),
    }
    reply: Json = {
        "status": rep.u64(),
        "error_msg": rep.text(),
        "times_built": rep.u64(),
        "is_non_deterministic": rep.u64(),
        "start_time": rep.u64(),
        "stop_time": rep.u64(),
    }
    built = {}
    for _ in range(rep.u64()):
        key = rep.text()
        built[key] = rep.text()  # the realisation as JSON text, kept verbatim
    reply["built_outputs"] = built
    return request, reply


def _add_to_store_nar(req: Cursor, rep: Cursor) -> tuple[Json, Json]:
    request = {
        "path": req.text(),
        "deriver": req.text(),
        "nar_hash": req.text(),
        "references": req.texts(),
        "registration_time": req.u64(),
        "nar_size": req.u64(),
        "ultimate": req.u64(),
        "sigs": req.texts(),
        "ca": req.text(),
    }
    nar = req.nar()
    if len(nar) != request["nar_size"]:
        raise ValueError("AddToStoreNar: NAR length differs from nar_size")
    request["nar_sha256"] = hashlib.sha256(nar).hexdigest()
    return request, {"result": rep.u64()}


COMMANDS = {
    1: ("QueryValidPaths", _query_valid_paths),
    2: ("QueryPathInfos", _query_path_infos),
    3: ("DumpStorePath", _dump_store_path),
    4: ("ImportPaths", _import_paths),
    5: ("ExportPaths", _export_paths),
    6: ("BuildPaths", _build_paths),
    7: ("QueryClosure", _query_closure),
    8: ("BuildDerivation", _build_derivation),
    9: ("AddToStoreNar", _add_to_store_nar),
}


def decode_session(c2s: bytes, s2c: bytes) -> Json:
    """Decode a serve session by hand: requests from `c2s`, replies from `s2c`.

    Every exchange records where its request and its reply lie in the two byte streams
    (`c2s_span`, `s2c_span`: [start, end) offsets), so a replay test can decode each message
    on its own and check that it consumes exactly those bytes.
    """
    req, rep = Cursor(c2s), Cursor(s2c)
    magic1, client_version = req.u64(), req.u64()
    magic2, server_version = rep.u64(), rep.u64()
    if (magic1, magic2) != (0x390C9DEB, 0x5452EECB):
        raise ValueError("bad serve magic")
    exchanges = []
    while not req.at_end():
        req_start, rep_start = req.pos, rep.pos
        code = req.u64()
        if code not in COMMANDS:
            raise ValueError(f"unknown serve command {code}")
        name, decode = COMMANDS[code]
        request, reply = decode(req, rep)
        exchanges.append(
            {
                "cmd": code,
                "name": name,
                "request": request,
                "reply": reply,
                "c2s_span": [req_start, req.pos],
                "s2c_span": [rep_start, rep.pos],
            }
        )
    if not rep.at_end():
        raise ValueError(f"{len(s2c) - rep.pos} unexplained bytes from the server")
    return {
        "client_version": client_version,
        "server_version": server_version,
        "handshake": {"c2s_span": [0, 16], "s2c_span": [0, 16]},
        "exchanges": exchanges,
    }


def write_session(out: Path, name: str, c2s: bytes, s2c: bytes, meaning: Json) -> None:
    (out / "serve").mkdir(parents=True, exist_ok=True)
    (out / "serve" / f"{name}.c2s.bin").write_bytes(c2s)
    (out / "serve" / f"{name}.s2c.bin").write_bytes(s2c)
    write_json(out / "serve" / f"{name}.json", meaning)
    cmds = [e["cmd"] for e in meaning["session"]["exchanges"]]
    log(f"serve/{name}: {len(c2s)} + {len(s2c)} bytes, commands {cmds}")


def only_session(label: str) -> tuple[bytes, bytes]:
    sessions = take_sessions()
    if len(sessions) != 1:
        raise RuntimeError(f"{label}: expected one serve session, the wrapper saw {len(sessions)}")
    return sessions[0]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise RuntimeError(f"cross-check failed: {what}")


def record_serve_copy(out: Path, wrapper: Path, salt: str) -> None:
    """`nix copy --to` and `nix copy --from` an ssh://localhost store."""
    expr = WORK / "export" / "export.nix"
    top = outputs_of(instantiate(expr, "top", {"salt": salt}))["out"]
    closure = run_text(["nix-store", "-qR", top]).split()
    facts = {p: path_facts(p) for p in closure}

    remote = fresh_dir(WORK / "remote-copy")
    uri = ssh_uri(wrapper, remote)
    cmd = ["nix", *NIX_FLAGS, "copy", *NO_SUBST, "--to", uri, top]
    run(cmd)
    c2s, s2c = only_session("copy-to")
    session = decode_session(c2s, s2c)
    added = [e["request"] for e in session["exchanges"] if e["cmd"] == 9]
    check(sorted(a["path"] for a in added) == sorted(closure), "copy-to uploads the closure")
    for a in added:
        f = facts[a["path"]]
        check(a["nar_hash"] == f["narHash_base16"] == a["nar_sha256"], f"narHash of {a['path']}")
        check(sorted(a["references"]) == f["references"], f"references of {a['path']}")
        check(a["deriver"] == f["deriver"], f"deriver of {a['path']}")
    write_session(
        out,
        "copy-to",
        c2s,
        s2c,
        {
            "description": "nix copy --to ssh://localhost (real Nix client, real nix-store --serve "
            "--write server): query validity, then AddToStoreNar per path",
            "command": cmd,
            "session": session,
            "facts": {"paths": [facts[p] for p in closure]},
        },
    )

    local = fresh_dir(WORK / "local-copy")
    cmd = [
        "nix",
        *NIX_FLAGS,
        "copy",
        *NO_SUBST,
        "--no-check-sigs",
        "--from",
        uri,
        "--to",
        str(local),
        top,
    ]
    run(cmd)
    c2s, s2c = only_session("copy-from")
    session = decode_session(c2s, s2c)
    for e in session["exchanges"]:
        if e["cmd"] == 3:
            f = facts[e["request"]["path"]]
            check(e["reply"]["nar_sha256"] == f["narHash_base16"], "DumpStorePath NAR hash")
            check(e["reply"]["nar_size"] == f["narSize"], "DumpStorePath NAR size")
        if e["cmd"] == 2:
            for info in e["reply"]["infos"]:
                f = facts[info["path"]]
                check(info["nar_hash"] == f["narHash"], f"QueryPathInfos hash of {info['path']}")
                check(sorted(info["references"]) == f["references"], "QueryPathInfos refs")
    write_session(
        out,
        "copy-from",
        c2s,
        s2c,
        {
            "description": "nix copy --from ssh://localhost into a fresh chroot store: "
            "QueryClosure, then QueryPathInfos and DumpStorePath per path",
            "command": cmd,
            "session": session,
            "facts": {"paths": [facts[p] for p in closure]},
        },
    )


def record_serve_build_paths(out: Path, wrapper: Path, salt: str) -> None:
    """`nix-store --store ssh://... -r <path>`: QueryPathInfos, then BuildPaths (cmd 6).

    A 2.8 client cannot build a `.drv` on an ssh:// store by itself (it would need to read the
    derivation through the store, which LegacySSHStore does not support), so this session asks
    for an output path that is already valid on the remote: BuildPaths then succeeds at once.
    """
    expr = WORK / "export" / "export.nix"
    leaf = outputs_of(instantiate(expr, "leaf", {"salt": salt}))["out"]
    remote = fresh_dir(WORK / "remote-build-paths")
    exported = run(["nix-store", "--export", leaf])
    run(["nix-store", "--store", str(remote), "--import"], stdin=exported)
    cmd = ["nix-store", "--store", ssh_uri(wrapper, remote), "-r", leaf, *NO_SUBST]
    run(cmd)
    c2s, s2c = only_session("build-paths")
    session = decode_session(c2s, s2c)
    cmds = [e["cmd"] for e in session["exchanges"]]
    check(cmds == [2, 6], f"build-paths commands {cmds}")
    check(session["exchanges"][1]["reply"]["status"] == 0, "BuildPaths succeeded")
    write_session(
        out,
        "build-paths",
        c2s,
        s2c,
        {
            "description": "nix-store --store ssh://localhost -r <output path valid on the "
            "remote>: QueryPathInfos, then BuildPaths with an opaque path",
            "command": cmd,
            "session": session,
            "facts": {"paths": [path_facts(leaf)]},
        },
    )


SERVE_EXPR = r"""
{ salt }:
{
  ok = derivation {
    name = "vec-serve-ok-${salt}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo built ok; echo ok ${salt} > $out" ];
  };
  fail = derivation {
    name = "vec-serve-fail-${salt}"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo this build fails on purpose >&2; exit 3" ];
  };
}
"""


def enc_u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return enc_u64(len(b)) + b + bytes(-len(b) % 8)


def enc_strs(items: list[str]) -> bytes:
    return enc_u64(len(items)) + b"".join(enc_str(i) for i in items)


def enc_basic_derivation(shown: Json) -> bytes:
    """A BasicDerivation (serve cmd 8) from `nix show-derivation` output, by hand."""
    data = enc_u64(len(shown["outputs"]))
    for name in sorted(shown["outputs"]):
        o = shown["outputs"][name]
        data += enc_str(name) + enc_str(o.get("path", "")) + enc_str(o.get("hashAlgo", ""))
        data += enc_str(o.get("hash", ""))
    data += enc_strs(sorted(shown["inputSrcs"])) + enc_str(shown["system"])
    data += enc_str(shown["builder"]) + enc_strs(shown["args"])
    data += enc_u64(len(shown["env"]))
    for key in sorted(shown["env"]):
        data += enc_str(key) + enc_str(shown["env"][key])
    return data


BUILD_OPTIONS = enc_u64(0) * 4 + enc_u64(1) + enc_u64(0)  # 2.8 client defaults, version 0x207
MISSING = "/nix/store/00000000000000000000000000000000-vec-missing"


def record_serve_manual(out: Path, salt: str) -> None:
    """Every command against a real `nix-store --serve --write`; requests written by hand."""
    work = WORK / "serve"
    work.mkdir(exist_ok=True)
    expr = work / "serve.nix"
    expr.write_text(SERVE_EXPR, encoding="utf-8")
    ok, fail = (instantiate(expr, a, {"salt": salt}) for a in ("ok", "fail"))
    ok_out = outputs_of(ok)["out"]
    top = outputs_of(instantiate(WORK / "export" / "export.nix", "top", {"salt": salt}))["out"]
    leaf = outputs_of(instantiate(WORK / "export" / "export.nix", "leaf", {"salt": salt}))["out"]
    to_import = run_text(["nix-store", "-qR", top, ok, fail]).split()
    export_stream = run(["nix-store", "--export", *to_import])
    fail_shown = show_derivation(fail)[fail]

    c2s = enc_u64(0x390C9DEB) + enc_u64(0x207)
    c2s += enc_u64(4) + export_stream
    c2s += enc_u64(1) + enc_u64(1) + enc_u64(0) + enc_strs(sorted([top, leaf, MISSING]))
    c2s += enc_u64(7) + enc_u64(0) + enc_strs([top])
    c2s += enc_u64(2) + enc_strs(sorted([top, MISSING]))
    c2s += enc_u64(5) + enc_u64(0) + enc_strs(sorted([leaf, top]))
    c2s += enc_u64(6) + enc_strs([f"{ok}!out"]) + BUILD_OPTIONS
    c2s += enc_u64(6) + enc_strs([f"{fail}!out"]) + BUILD_OPTIONS
    c2s += enc_u64(8) + enc_str(fail) + enc_basic_derivation(fail_shown) + BUILD_OPTIONS
    c2s += enc_u64(7) + enc_u64(1) + enc_strs([ok])
    c2s += enc_u64(3) + enc_str(ok_out)

    remote = fresh_dir(WORK / "remote-manual")
    s2c = serve_exchange(remote, c2s)
    session = decode_session(c2s, s2c)
    cmds = [e["cmd"] for e in session["exchanges"]]
    replies = [e["reply"] for e in session["exchanges"]]
    check(cmds == [4, 1, 7, 2, 5, 6, 6, 8, 7, 3], f"manual commands {cmds}")
    check(replies[1]["valid"] == sorted([top, leaf]), "QueryValidPaths skips the missing path")
    check(replies[2]["closure"] == sorted(run_text(["nix-store", "-qR", top]).split()), "closure")
    check([i["path"] for i in replies[3]["infos"]] == [top], "QueryPathInfos skips missing")
    check([r["path"] for r in replies[4]["export"]] == [leaf, top], "ExportPaths order")
    check(replies[5]["status"] == 0, "BuildPaths ok")
    check(replies[6]["status"] != 0 and "error_msg" in replies[6], "BuildPaths failure")
    check(replies[7]["status"] != 0, "BuildDerivation failure")
    check(ok_out in replies[8]["closure"], "QueryClosure with outputs")
    check(
        replies[9]["nar_sha256"]
        == hashlib.sha256(run(["nix-store", "--dump", f"{remote}{ok_out}"])).hexdigest(),
        "dump",
    )
    write_session(
        out,
        "manual",
        c2s,
        s2c,
        {
            "description": "client bytes written by hand in record_vectors.py (not by Nix), server "
            "replies from a real nix-store --serve --write: ImportPaths, "
            "QueryValidPaths (lock, one missing path), QueryClosure, QueryPathInfos, "
            "ExportPaths, BuildPaths (success and failure), BuildDerivation "
            "(failure), QueryClosure with outputs, DumpStorePath",
            "command": ["nix-store", "--serve", "--write", "--store", str(remote)],
            "session": session,
            "facts": {
                "ok_drv": ok,
                "ok_out": ok_out,
                "fail_drv": fail,
                "imported": [path_facts(p) for p in to_import],
            },
        },
    )


def serve_exchange(store: Path, c2s: bytes) -> bytes:
    """Feed `c2s` to a real serve process; read until every reply is there, then hang up."""
    errlog = WORK / "serve" / "manual.stderr"
    with errlog.open("wb") as err:
        proc = subprocess.Popen(
            [
                "nix-store",
                "--serve",
                "--write",
                "--store",
                str(store),
                "--option",
                "extra-sandbox-paths",
                SANDBOX_PATHS,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(c2s)
        proc.stdin.flush()  # keep stdin open: a hang-up would abort the builds
        s2c = b""
        while True:
            try:
                decode_session(c2s, s2c)
                break
            except EndOfDataError:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    proc.wait()
                    raise RuntimeError(f"serve died: {errlog.read_text()}") from None
                s2c += chunk
        proc.stdin.close()
        rest = proc.stdout.read()
        proc.wait()
    check(rest == b"", "no bytes after the last reply")
    return s2c


# ------------------------------------------------------------------------------------------
# hook/: build-hook sessions recorded by a spy; the relay session also yields serve/build-remote

SPY_TEMPLATE = r'''#!@PYTHON@
"""Build-hook spy written by tests/record_vectors.py.

Records every byte Nix writes on stdin and every byte the hook writes on stderr. In "relay"
mode the real build-remote does the work; in "script" mode the spy answers the `try`
requests itself with the configured replies and never accepts.
"""
import json, os, subprocess, sys, threading

CONFIG = json.loads(@CONFIG@)
session = os.path.join(CONFIG["outdir"], str(os.getpid()))
os.makedirs(session)
stdin_log = open(os.path.join(session, "stdin.bin"), "wb", buffering=0)
stderr_log = open(os.path.join(session, "stderr.bin"), "wb", buffering=0)
with open(os.path.join(session, "meta.json"), "w") as f:
    json.dump({"argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(),
               "pgid": os.getpgid(0), "sid": os.getsid(0),
               "fds": sorted(int(x) for x in os.listdir("/proc/self/fd"))}, f)

def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]

def to_nix(data):
    stderr_log.write(data)
    write_all(2, data)

def relay():
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    extra = tuple(fd for fd in (4, 5) if os.path.exists(f"/proc/self/fd/{fd}"))
    child = subprocess.Popen(["build-remote", *sys.argv[1:]], executable=CONFIG["real_hook"],
                             stdin=in_r, stdout=err_w, stderr=err_w, pass_fds=extra)
    os.close(in_r)
    os.close(err_w)

    def pump_stdin():
        alive = True
        while chunk := os.read(0, 65536):
            stdin_log.write(chunk)
            if alive:
                try:
                    write_all(in_w, chunk)
                except BrokenPipeError:
                    alive = False
        os.close(in_w)

    threading.Thread(target=pump_stdin, daemon=True).start()
    while chunk := os.read(err_r, 65536):
        to_nix(chunk)
    os._exit(child.wait())

class Eof(Exception):
    pass

def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            raise Eof
        stdin_log.write(chunk)
        buf += chunk
    return buf

def read_u64():
    return int.from_bytes(read_exact(8), "little")

def read_str():
    n = read_u64()
    data = read_exact(n)
    read_exact(-n % 8)
    return data

def script():
    replies = CONFIG["replies"]
    try:
        while read_u64():
            read_str(), read_str()
        count = 0
        while True:
            if read_str() != b"try":
                break
            read_u64(); read_str(); read_str()
            for _ in range(read_u64()):
                read_str()
            to_nix(b"# " + replies[min(count, len(replies) - 1)].encode() + b"\n")
            count += 1
    except Eof:
        pass
    os._exit(0)

relay() if CONFIG["mode"] == "relay" else script()
'''

HOOK_EXPR = r"""
{ salt }:
let
  sys = "x86_64-linux";
in rec {
  src = builtins.toFile "vec-hook-src-${salt}.txt" "hook source ${salt}\n";
  dep = derivation {
    name = "vec-hook-dep-${salt}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "echo dep ${salt} > $out" ];
  };
  depMulti = derivation {
    name = "vec-hook-multi-${salt}"; system = sys; builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo multi ${salt} > $out; echo multi-dev ${salt} > $dev" ];
  };
  top = derivation {
    name = "vec-hook-top-${salt}"; system = sys; builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo building top ${salt}; echo $src $dep $depdev > $out; echo dev > $dev" ];
    inherit src dep;
    depdev = depMulti.dev;
    requiredSystemFeatures = [ "big-parallel" ];
  };
  broken = derivation {
    name = "vec-hook-broken-${salt}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "echo about to fail; echo this build fails on purpose >&2; exit 7" ];
    inherit dep;
    requiredSystemFeatures = [ "big-parallel" ];
  };
  # for the scripted sessions: a is wanted by b; both are built locally after `# decline`
  a = derivation {
    name = "vec-hook-a-${salt}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "echo a ${salt} > $out" ];
    requiredSystemFeatures = [ "big-parallel" ];
  };
  b = derivation {
    name = "vec-hook-b-${salt}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "echo b $a > $out" ];
    inherit a;
  };
}
"""


def write_spy(name: str, replies: list[str] | None = None) -> tuple[Path, Path]:
    """A spy that relays to build-remote, or (with `replies`) answers by itself."""
    outdir = fresh_dir(WORK / "hook-capture" / name)
    config = {
        "mode": "script" if replies else "relay",
        "outdir": str(outdir),
        "real_hook": BUILD_REMOTE,
        "replies": replies or [],
    }
    spy = WORK / f"spy-{name}.py"
    spy.write_text(
        SPY_TEMPLATE.replace("@PYTHON@", sys.executable).replace(
            "@CONFIG@", repr(json.dumps(config))
        ),
        encoding="utf-8",
    )
    spy.chmod(0o755)
    return spy, outdir


@dataclass
class HookCapture:
    stdin: bytes
    stderr: bytes
    meta: Json = field(default_factory=dict)


def take_hook_sessions(outdir: Path) -> list[HookCapture]:
    time.sleep(0.3)
    caps = []
    for d in sorted(outdir.iterdir(), key=lambda p: int(p.name)):
        meta = json.loads((d / "meta.json").read_text())
        stdin, stderr = (d / "stdin.bin").read_bytes(), (d / "stderr.bin").read_bytes()
        caps.append(HookCapture(stdin, stderr, meta))
    return caps


def decode_hook_stdin(data: bytes, *, accepted: int | None = None) -> Json:
    """Hand-decode what Nix wrote to the hook: settings, try requests, post-accept sets.

    `accepted` is the index of the try request the hook answered with `# accept`.
    """
    cur = Cursor(data)
    settings = {}
    while cur.u64() == 1:
        name = cur.text()
        settings[name] = cur.text()
    requests: list[Json] = []
    after_accept: Json | None = None
    while not cur.at_end():
        word = cur.text()
        if word != "try":
            raise ValueError(f"unexpected word {word!r} on hook stdin")
        requests.append(
            {
                "type": "try",
                "am_willing": cur.u64(),
                "system": cur.text(),
                "drv_path": cur.text(),
                "required_features": cur.texts(),
            }
        )
        if len(requests) - 1 == accepted:
            after_accept = {"inputs": cur.texts(), "wanted_outputs": cur.texts()}
            break
    if not cur.at_end():
        raise ValueError("bytes after the wanted-output set")
    out: Json = {"settings": settings, "requests": requests}
    if after_accept is not None:
        out.update(after_accept)
    return out


def decode_hook_stderr(data: bytes) -> list[Json]:
    """Split what the hook wrote to fd 2 into lines and classify them as Nix does."""
    if data and not data.endswith(b"\n"):
        raise ValueError("hook stderr does not end with a newline")
    lines: list[Json] = []
    expect_machine = False
    for raw in data.split(b"\n")[:-1]:
        text = raw.decode("utf-8")
        if expect_machine:
            lines.append({"kind": "machine", "text": text})
            expect_machine = False
        elif text.startswith("@nix "):
            lines.append({"kind": "log", "json": json.loads(text[5:])})
        elif text.startswith("# "):
            lines.append({"kind": "reply", "word": text[2:]})
            expect_machine = text == "# accept"
        else:
            lines.append({"kind": "text", "text": text})
    return lines


def write_hook(out: Path, name: str, cap: HookCapture, meaning: Json) -> None:
    (out / "hook").mkdir(parents=True, exist_ok=True)
    (out / "hook" / f"{name}.stdin.bin").write_bytes(cap.stdin)
    (out / "hook" / f"{name}.stderr.bin").write_bytes(cap.stderr)
    write_json(out / "hook" / f"{name}.json", meaning)
    log(f"hook/{name}: {len(cap.stdin)} + {len(cap.stderr)} bytes")


@dataclass(frozen=True)
class RelayCase:
    name: str
    attr: str
    succeeds: bool
    hook_description: str
    serve_description: str


RELAY_CASES = [
    RelayCase(
        "build-remote",
        "top",
        succeeds=True,
        hook_description="the real build-remote behind a recording spy: settings block, one try "
        "(-j0, feature big-parallel), # accept + machine, the input closure and the wanted "
        "outputs; stderr carries @nix JSON log lines",
        serve_description="build-remote (real Nix 2.8 client) building the hook vector's "
        "derivation on ssh://localhost: upload inputs, BuildDerivation, query and download the "
        "outputs",
    ),
    RelayCase(
        "build-remote-failure",
        "broken",
        succeeds=False,
        hook_description="as build-remote, but the builder exits 7: build-remote reports the "
        "failure as an @nix msg line and exits 1",
        serve_description="build-remote uploading the input and sending BuildDerivation for a "
        "derivation whose builder fails: the BuildResult carries a failure status",
    ),
]


def record_hook_relay(out: Path, wrapper: Path, salt: str, case: RelayCase) -> None:
    """A real build-remote session behind the spy; its ssh://localhost session is recorded too."""
    expr = WORK / "hook" / "hook.nix"
    drv = instantiate(expr, case.attr, {"salt": salt})
    shown = show_derivation(drv)[drv]
    used_outputs = [outputs_of(d)[o] for d, outs in shown["inputDrvs"].items() for o in outs]
    for dep in shown["inputDrvs"]:
        build(dep)
    drv_out = outputs_of(drv)
    delete_paths(list(drv_out.values()))
    spy, capdir = write_spy(case.name)
    remote = fresh_dir(WORK / f"remote-{case.name}")
    uri = ssh_uri(wrapper, remote)
    builders = f"{uri} {SYSTEM} - 1 1 big-parallel"
    cmd = [
        "nix-store",
        "-r",
        drv,
        *NO_SUBST,
        "-j0",
        "--builders",
        builders,
        "--option",
        "build-hook",
        str(spy),
    ]
    take_sessions()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    check(
        (proc.returncode == 0) == case.succeeds,
        f"{case.name}: nix-store -r exit {proc.returncode}: {proc.stderr.decode()[-2000:]}",
    )
    for p in drv_out.values():
        check(is_valid(p) == case.succeeds, f"{p} valid after the remote build")
    (cap,) = take_hook_sessions(capdir)
    stdin = decode_hook_stdin(cap.stdin, accepted=0)
    stderr = decode_hook_stderr(cap.stderr)
    inputs = sorted({*shown["inputSrcs"], *used_outputs})
    expected_settings = {
        "builders": builders,
        "max-jobs": "0",
        "build-hook": str(spy),
        "substituters": "",
        "system": SYSTEM,
    }
    for key, value in expected_settings.items():
        got = stdin["settings"].get(key)
        check(got == value, f"setting {key} = {value!r}, got {got!r}")
    check(
        stdin["requests"]
        == [
            {
                "type": "try",
                "am_willing": 0,
                "system": SYSTEM,
                "drv_path": drv,
                "required_features": ["big-parallel"],
            }
        ],
        "one try request for the derivation",
    )
    closure = sorted(set(run_text(["nix-store", "-qR", *inputs]).split()))
    check(stdin["inputs"] == closure, f"input set {stdin['inputs']} == closure {closure}")
    check(stdin["wanted_outputs"] == sorted(drv_out), "wanted outputs")
    replies = [line for line in stderr if line["kind"] in {"reply", "machine"}]
    check(
        replies == [{"kind": "reply", "word": "accept"}, {"kind": "machine", "text": uri}],
        f"accept + machine line, got {replies}",
    )
    write_hook(
        out,
        case.name,
        cap,
        {
            "description": case.hook_description,
            "command": cmd,
            "nix_exit_status": proc.returncode,
            "hook_argv": cap.meta["argv"],
            "expected_settings": expected_settings,
            "stdin": stdin,
            "stderr_lines": stderr,
            "facts": {
                "drv_path": drv,
                "outputs": drv_out,
                "required_features": ["big-parallel"],
                "input_closure": closure,
                "inputs_from": inputs,
                "drv_aterm": Path(drv).read_text(encoding="utf-8"),
            },
        },
    )

    c2s, s2c = only_session(case.name)
    session = decode_session(c2s, s2c)
    paths = closure + (list(drv_out.values()) if case.succeeds else [])
    facts = {p: path_facts(p) for p in paths}
    for e in session["exchanges"]:
        if e["cmd"] == 9:
            f = facts[e["request"]["path"]]
            check(
                e["request"]["nar_hash"] == f["narHash_base16"] == e["request"]["nar_sha256"],
                "uploaded NAR hash",
            )
        if e["cmd"] == 8:
            d = e["request"]["derivation"]
            check(e["request"]["drv_path"] == drv, "BuildDerivation drv path")
            check(d["input_srcs"] == closure, "inputSrcs replaced by the input closure")
            check({k: v["path"] for k, v in d["outputs"].items()} == drv_out, "outputs")
            check((e["reply"]["status"] == 0) == case.succeeds, "build status")
        if e["cmd"] == 3:
            f = facts[e["request"]["path"]]
            check(e["reply"]["nar_sha256"] == f["narHash_base16"], "downloaded NAR hash")
    write_session(
        out,
        case.name,
        c2s,
        s2c,
        {
            "description": case.serve_description,
            "command": cmd,
            "session": session,
            "facts": {
                "drv_path": drv,
                "outputs": drv_out,
                "input_closure": closure,
                "show-derivation": show_derivation(drv),
                "drv_aterm": Path(drv).read_text(encoding="utf-8"),
                "paths": [facts[p] for p in sorted(facts)],
            },
        },
    )


def record_hook_scripted(out: Path, salt: str) -> None:
    """The spy answers itself: postpone, then decline twice; then decline-permanently."""
    expr = WORK / "hook" / "hook.nix"
    args = {"salt": salt}
    a, b = instantiate(expr, "a", args), instantiate(expr, "b", args)
    a_out, b_out = outputs_of(a)["out"], outputs_of(b)["out"]

    cases = {
        "postpone-decline": (
            (
                "the spy replies # postpone to the first try, then # decline: Nix re-sends the "
                "same try after build-poll-interval, builds locally, then sends a try for the "
                "next drv"
            ),
            ["postpone", "decline"],
            ["-j1", "--option", "build-poll-interval", "1"],
        ),
        "decline-permanently": (
            (
                "the spy replies # decline-permanently: Nix closes the hook's stdin and builds "
                "everything locally without asking again"
            ),
            ["decline-permanently"],
            ["-j1"],
        ),
    }
    for name, (what, replies, extra) in cases.items():
        delete_paths([b_out, a_out])
        spy, capdir = write_spy(name, replies)
        cmd = [
            "nix-store",
            "-r",
            b,
            *NO_SUBST,
            "--builders",
            "",
            "--option",
            "build-hook",
            str(spy),
            *extra,
        ]
        run(cmd)
        caps = take_hook_sessions(capdir)
        check(len(caps) == 1, f"{name}: one hook process")
        cap = caps[0]
        stdin = decode_hook_stdin(cap.stdin)
        stderr = decode_hook_stderr(cap.stderr)
        tries = [
            (r["drv_path"], r["required_features"], r["am_willing"]) for r in stdin["requests"]
        ]
        if name == "postpone-decline":
            check(
                tries == [(a, ["big-parallel"], 1), (a, ["big-parallel"], 1), (b, [], 1)],
                f"tries {tries}",
            )
        else:
            check(tries == [(a, ["big-parallel"], 1)], f"tries {tries}")
        settings = stdin["settings"]
        check(settings["builders"] == "" and settings["build-hook"] == str(spy), "settings")
        write_hook(
            out,
            name,
            cap,
            {
                "description": what,
                "command": cmd,
                "hook_argv": cap.meta["argv"],
                "expected_settings": {"builders": "", "build-hook": str(spy), "max-jobs": "1"},
                "stdin": stdin,
                "stderr_lines": stderr,
                "facts": {
                    "a": {"drv_path": a, "out": a_out, "required_features": ["big-parallel"]},
                    "b": {"drv_path": b, "out": b_out, "required_features": []},
                },
            },
        )


# ------------------------------------------------------------------------------------------


def record_sessions(out: Path, salt: str) -> None:
    """serve/ and hook/: one build-remote run feeds a vector of each."""
    wrapper = serve_wrapper()
    record_serve_copy(out, wrapper, salt)
    record_serve_build_paths(out, wrapper, salt)
    record_serve_manual(out, salt)
    hook_dir = fresh_dir(WORK / "hook")
    (hook_dir / "hook.nix").write_text(HOOK_EXPR, encoding="utf-8")
    for case in RELAY_CASES:
        record_hook_relay(out, wrapper, salt, case)
    record_hook_scripted(out, salt)


GROUPS = {"nar": ["nar"], "drv": ["drv"], "export": ["export"], "sessions": ["serve", "hook"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--salt", default="v1", help="changes every derivation (and store path)")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=list(GROUPS),
        default=list(GROUPS),
        help="'sessions' records serve/ and hook/ together (one build feeds both)",
    )
    opts = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the recorder builds in the real local store")
    version = run_text(["nix-store", "--version"]).strip()
    if not version.endswith(" 2.8.0"):
        log(f"warning: vectors are meant to come from Nix 2.8.0, this is {version!r}")
    WORK.mkdir(exist_ok=True)
    out: Path = opts.out
    for group in opts.only:
        for sub in GROUPS[group]:
            if (out / sub).exists():
                rmtree(out / sub)
    if "nar" in opts.only:
        record_nar(out)
    if "drv" in opts.only:
        record_drv(out, opts.salt)
    if "export" in opts.only or "sessions" in opts.only:
        # the serve sessions copy the export closure around
        record_export(out if "export" in opts.only else WORK / "export-unused", opts.salt)
    if "sessions" in opts.only:
        record_sessions(out, opts.salt)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"done: {total} bytes under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
