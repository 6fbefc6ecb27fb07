"""The accept path's attempt loop, without a farm: who is blamed, who is given up, what is tried.

`build_remotely` runs on scripted stores (`ScriptedChannel`): the local store is a ``nix-store
--serve`` session, the builders ``nix-daemon`` sessions, each peer's side composed with the
protocol codecs. A stand-in picker records which builders are marked down and hands out the
spares. Each test is one story of issue 13's "each failover phase, blame": a builder lost
during the upload (the build moves, the next builder's failure is the build's), a builder
that refuses (no failover), the local store failing (no failover, nothing marked down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import StoreRefusedError, TransportError
from nixdist.hook.build import build_remotely
from nixdist.hook.output import HookOutput
from nixdist.hook.picked import Picked
from nixdist.model.hashes import Hash, HashAlgo
from nixdist.model.local_store import parse_local_store
from nixdist.model.machines import Machine
from nixdist.model.path_info import PathInfo
from nixdist.model.request import BuildRequest
from nixdist.model.store_path import StorePath
from nixdist.protocol import serve, worker
from nixdist.protocol import serve_messages as msg
from nixdist.protocol.hook import AcceptedWork, HookExit, HookSettings
from nixdist.protocol.serve import BuildResult, BuildStatus, encode_store_paths
from nixdist.settings import Settings
from nixdist.state.advisory import Advisory
from nixdist.state.history import History
from nixdist.state.slots import SlotDirectory
from nixdist.store.daemon import DaemonStore
from nixdist.store.serve import ServeStore
from nixdist.wire.nar import Contents, Regular, encode_nar
from nixdist.wire.primitives import encode_text, encode_texts, encode_u64
from scripted import ScriptedChannel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixdist.model.local_store import LocalStore

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "drv"
DRV = json.loads((VECTORS / "simple.json").read_text())
DRV_PATH = StorePath.parse(DRV["drvPath"])
INPUT = StorePath.parse("/nix/store/dddddddddddddddddddddddddddddddd-input")
NAR = b"".join(encode_nar([Regular(path=(), executable=False, size=3), Contents(data=b"in\n")]))
INFO = PathInfo(
    path=INPUT,
    deriver=None,
    nar_hash=Hash.of(HashAlgo.SHA256, NAR),
    references=frozenset(),
    nar_size=len(NAR),
)
LAST = worker.encode_stderr(worker.Last())


def _daemon_hello() -> bytes:
    return (
        encode_u64(serve.WORKER_MAGIC_2)
        + encode_u64(0x126)
        + encode_texts([])
        + encode_text("2.34.8")
        + encode_u64(worker.Trust.TRUSTED)
        + LAST
    )


class _Picker:
    """The stand-in for `MachinePicker`: marks down, and hands out `spares` in order."""

    def __init__(self, state: Path, spares: list[Picked]) -> None:
        self.config = Settings(state_dir=state)
        self.history = History(Advisory(None, print))
        self.spares = spares
        self.down: list[tuple[str, str]] = []
        self.asked = 0

    def mark_down(self, machine: Machine, reason: str) -> None:
        self.down.append((machine.uri, reason))

    def pick_again(self, request: BuildRequest) -> Picked | None:
        del request
        self.asked += 1
        return self.spares.pop(0) if self.spares else None


@dataclass(frozen=True)
class _Setting:
    store: LocalStore
    environ: dict[str, str]
    slots: SlotDirectory
    state: Path
    output: Path


@pytest.fixture
def setting(tmp_path: Path) -> _Setting:
    root = tmp_path / "root"
    drv_file = root / str(DRV_PATH).lstrip("/")
    drv_file.parent.mkdir(parents=True)
    drv_file.write_bytes((VECTORS / "simple.bin").read_bytes())
    slots = SlotDirectory(tmp_path / "load")
    slots.ensure()
    return _Setting(
        store=parse_local_store(f"local?root={root}"),
        environ={"NIXDIST_STATE_DIR": str(tmp_path / "state"), "NIXDIST_CONFIG": ""},
        slots=slots,
        state=tmp_path / "state",
        output=tmp_path / "hook-output",
    )


def _picked(name: str, script: bytes, slots: SlotDirectory) -> Picked:
    machine = Machine(uri=f"ssh-ng://{name}", systems=("x86_64-linux",), max_jobs=1)
    lease = slots.try_slot(machine).lease
    assert lease is not None
    return Picked(
        machine=machine, lease=lease, remote=DaemonStore(ScriptedChannel(script), name=name)
    )


def _run(
    setting: _Setting, first: Picked, picker: _Picker, local_scripts: list[bytes]
) -> tuple[int, str]:
    scripts = iter(local_scripts)

    def open_local(store: LocalStore, environ: Mapping[str, str]) -> ServeStore:
        del store, environ
        return ServeStore(ScriptedChannel(next(scripts)), name="local")

    with setting.output.open("w") as out_file:
        code = build_remotely(
            request=BuildRequest(drv_path=str(DRV_PATH), system="x86_64-linux", am_willing=False),
            work=AcceptedWork(inputs=frozenset({str(INPUT)}), wanted_outputs=frozenset({"out"})),
            settings=HookSettings(system="x86_64-linux"),
            store=setting.store,
            first=first,
            picker=picker,
            out=HookOutput(out_file.fileno()),
            environ=setting.environ,
            open_local=open_local,
        )
    return code, setting.output.read_text()


def _serve_hello() -> bytes:
    return serve.encode_server_hello()


def _local_with_input() -> bytes:
    infos = msg.encode_query_path_infos_reply([INFO], serve.PROTOCOL_VERSION)
    return _serve_hello() + infos + NAR


def test_a_builder_lost_during_the_upload_moves_the_build_and_the_next_failure_is_the_builds(
    setting: _Setting,
) -> None:
    slots = setting.slots
    # b1 says the input is missing, then goes away while it is being sent.
    first = _picked("b1", _daemon_hello() + LAST + encode_store_paths([]), slots)
    # b2 has the input already, and the build fails there: that is the derivation failing.
    failed = BuildResult(status=BuildStatus.PERMANENT_FAILURE, error_msg="exit code 3")
    second_script = (
        _daemon_hello()
        + LAST
        + encode_store_paths([INPUT])
        + LAST
        + worker.encode_build_result(failed, 0x126)
    )
    picker = _Picker(setting.state, [_picked("b2", second_script, slots)])
    code, said = _run(setting, first, picker, [_local_with_input(), _serve_hello()])
    assert code == HookExit.BUILD_FAILED
    assert [uri for uri, _ in picker.down] == ["ssh-ng://b1"]
    assert picker.down[0][1].startswith("lost during upload")
    assert picker.asked == 1
    assert "'ssh-ng://b1' failed during upload" in said
    assert "on 'ssh-ng://b2' failed: exit code 3" in said


def test_a_refusing_builder_is_not_given_up_and_nothing_else_is_tried(
    setting: _Setting,
) -> None:
    slots = setting.slots
    refusal = worker.encode_stderr(worker.DaemonFailure(message="lacks a signature"))
    first = _picked("b1", _daemon_hello() + LAST + encode_store_paths([]) + refusal, slots)
    picker = _Picker(setting.state, [])
    with pytest.raises(StoreRefusedError, match="lacks a signature"):
        _run(setting, first, picker, [_local_with_input()])
    assert picker.down == []
    assert picker.asked == 0


def test_a_failing_local_store_is_not_a_builder_lost(setting: _Setting) -> None:
    slots = setting.slots
    first = _picked("b1", _daemon_hello() + LAST + encode_store_paths([]), slots)
    picker = _Picker(setting.state, [])
    # The local store answers the greeting, then dies before the input's path info.
    with pytest.raises(TransportError) as caught:
        _run(setting, first, picker, [_serve_hello()])
    assert caught.value.peer == "local"
    assert picker.down == []
    assert picker.asked == 0
