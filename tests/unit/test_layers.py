"""The layering of nixdist, enforced.

A module imports only from its own layer or layers below it, and the pure layers (model, wire,
protocol, scheduler) import nothing that does I/O and touch no file, process or socket when
imported.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "nixdist"

# Lower rank = lower layer. A module may import ranks <= its own.
RANK = {
    "errors": 0,
    "model": 1,
    "wire": 2,
    "protocol": 3,
    "transport": 4,
    "store": 5,
    "scheduler": 6,
    "state": 7,
    "settings": 7,
    "hook": 8,
    "engine": 8,
    "web": 8,
    "farm": 8,
    "cli": 9,
}
PURE = {"model", "wire", "protocol", "scheduler"}
# The scheduler decides; it knows the model and nothing else (design.md §4).
ONLY = {"scheduler": {"errors", "model", "scheduler"}}
IO_MODULES = {
    "asyncio",
    "fcntl",
    "http",
    "multiprocessing",
    "os",
    "pathlib",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "subprocess",
    "tempfile",
    "threading",
    "urllib",
}


def _layer(module_file: Path) -> str:
    parts = module_file.relative_to(PACKAGE).with_suffix("").parts
    return "" if parts == ("__init__",) else parts[0]


def _imports(module_file: Path) -> list[tuple[int, str]]:
    tree = ast.parse(module_file.read_text(), filename=str(module_file))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p))


@pytest.mark.parametrize("module_file", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downward(module_file: Path) -> None:
    layer = _layer(module_file)
    assert layer in RANK, f"{module_file}: unknown layer {layer!r}; add it to RANK"
    for lineno, name in _imports(module_file):
        top, _, rest = name.partition(".")
        if top == "nixdist":
            target = rest.partition(".")[0]
            assert target in RANK, f"{module_file}:{lineno}: imports unknown layer {name}"
            assert RANK[target] <= RANK[layer], (
                f"{module_file}:{lineno}: {layer} must not import the higher layer {name}"
            )
            allowed = ONLY.get(layer)
            assert allowed is None or target in allowed, (
                f"{module_file}:{lineno}: {layer} may import only {sorted(allowed)}, not {name}"
            )
        elif layer in PURE:
            assert top not in IO_MODULES, (
                f"{module_file}:{lineno}: pure layer {layer} imports {name}"
            )


_PROBE = """
import importlib, json, sys
events = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str):
        path = args[0]
        if path.endswith((".py", ".pyc")) or "__pycache__" in path or path.endswith(".pth"):
            return
        if event != "open" and any(path.startswith(p) for p in sys.path if p):
            return  # the import system listing package directories
    if event.startswith(("open", "subprocess.", "socket.", "os.system", "os.exec", "os.fork",
                         "os.spawn", "os.posix_spawn", "os.scandir", "os.listdir")):
        events.append([event, repr(args)[:200]])
sys.addaudithook(hook)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(events))
"""


def test_pure_layers_do_no_io_at_import() -> None:
    names = sorted(
        ".".join(("nixdist", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in MODULES
        if _layer(p) in PURE
    )
    assert names, "no pure modules found"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *names],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    ).stdout
    assert json.loads(out) == []


# Nix waits for the hook's first reply with its whole build loop (bench W4): what only an
# accepted build needs is imported when it is needed, never when the hook starts.
_NOT_AT_HOOK_START = (
    "sqlite3",
    "subprocess",
    "socket",
    "hashlib",
    "nixdist.state.db",
    "nixdist.transport",
    "nixdist.store",
    "nixdist.protocol.serve",
    "nixdist.model.derivation",
    "nixdist.hook.build",
)


def test_hook_start_imports_only_what_a_decline_needs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, nixdist.hook; print(json.dumps(sorted(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    ).stdout
    loaded = json.loads(out)
    early = [m for m in loaded if m.startswith(_NOT_AT_HOOK_START)]
    assert early == []


_DECLINE = """
import importlib, json, sys
from nixdist.hook.output import HookOutput
hook_main = importlib.import_module("nixdist.hook.main")

seen = []
real_reply = HookOutput.reply

def reply(self, *args, **kwargs):
    seen.append(sorted(sys.modules))
    real_reply(self, *args, **kwargs)

HookOutput.reply = reply
hook_main.main(["nixdist-hook", "3"])
print(json.dumps(seen[0]))
"""


def test_a_decline_is_answered_before_loading_what_only_an_accept_needs(tmp_path: Path) -> None:
    """The whole decline, not only the import: from the settings to ``# decline``."""
    from nixdist.model.request import BuildRequest  # noqa: PLC0415
    from nixdist.protocol.hook import encode_settings, encode_try  # noqa: PLC0415

    machines = tmp_path / "machines"
    machines.write_text("ssh://b1 x86_64-linux - 4 1 - - -\n")  # no big-parallel
    stdin = encode_settings({"builders": f"@{machines}", "system": "x86_64-linux"}) + encode_try(
        BuildRequest(
            am_willing=False,
            system="x86_64-linux",
            drv_path="/nix/store/00000000000000000000000000000000-x.drv",
            required_features=frozenset({"big-parallel"}),
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", _DECLINE],
        input=stdin,
        check=True,
        capture_output=True,
        env={
            "PYTHONPATH": str(SRC),
            "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NIXDIST_STATE_DIR": str(tmp_path / "state"),
            "NIX_CURRENT_LOAD": str(tmp_path / "load"),
        },
    )
    assert b"# decline" in done.stderr
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.startswith(_NOT_AT_HOOK_START)] == []


def test_no_function_is_over_sixty_lines() -> None:
    """One story per function: longer ones are split where their parts have names."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert long == []
