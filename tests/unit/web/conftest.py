"""Fixtures for the web tests: a state directory filled by the hook's own writers, machines,
slot locks, and the app served by a real uvicorn on an ephemeral loopback port (in a thread),
spoken to with urllib. Helpers are fixtures too (`get`, `serve`, `sources_for`): a test module
cannot import a conftest.

The history (`filled_state`), written through `nixdist.state.history.History` as the hook
does::

    b1  built x2 (upload 1000+2000 B / 1+2 paths, download 500+700 B / 1+1 paths)
        running x1 (this process: alive)
    b2  failed x1 (error "exit code 3\\nlog tail"), lost x1, interrupted x1 (a dead process)
    b3  no builds; down (health record until the far future)
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from nixdist.model.machines import Machine
from nixdist.state.advisory import Advisory
from nixdist.state.db import StateDB
from nixdist.state.history import History
from nixdist.state.rows import Down, Outcome, Phase
from nixdist.state.slots import SlotDirectory
from nixdist.web import ListenAddress, Sources, bind, bound_port, create_app
from nixdist.web.server import make_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from starlette.types import ASGIApp

HANG_GUARD_S = 60.0  # a guard against a hang, never a measurement

B1 = Machine(uri="ssh://b1", systems=("x86_64-linux",), max_jobs=2)
B2 = Machine(
    uri="ssh://b2", systems=("x86_64-linux",), max_jobs=1, supported_features=frozenset({"kvm"})
)
B3 = Machine(uri="ssh://b3", systems=("aarch64-linux",), max_jobs=4)
MACHINES = (B1, B2, B3)


def drv(name: str) -> str:
    return f"/nix/store/{'a' * 32}-{name}.drv"


@dataclass(frozen=True, slots=True, kw_only=True)
class Filled:
    state: Path
    slots: SlotDirectory
    running_id: int
    interrupted_id: int


def _finished(
    history: History,
    name: str,
    machine: str,
    status: Outcome,
    *,
    up: tuple[int, int] = (0, 0),
    down: tuple[int, int] = (0, 0),
    error: str | None = None,
) -> None:
    record = history.start_build(drv_path=drv(name), machine=machine, attempt=1)
    record.enter(Phase.UPLOAD)
    record.note(upload_s=0.25, upload_bytes=up[0], upload_paths=up[1])
    record.enter(Phase.BUILD)
    record.note(build_s=1.5)
    if status is Outcome.BUILT:
        record.enter(Phase.DOWNLOAD)
        record.note(download_s=0.5, download_bytes=down[0], download_paths=down[1])
    record.finish(status, error=error)


_DEAD_HOOK = """
import sys
from pathlib import Path
from nixdist.state.db import StateDB
with StateDB.open(Path(sys.argv[1])) as db:
    print(db.start_build(drv_path=sys.argv[2], machine="ssh://b2", attempt=2))
"""


@pytest.fixture
def filled_state(tmp_path: Path) -> Filled:
    state = tmp_path / "state"
    errors: list[str] = []
    with StateDB.open(state) as db:
        history = History(Advisory(db, errors.append))
        _finished(history, "one", B1.uri, Outcome.BUILT, up=(1000, 1), down=(500, 1))
        _finished(history, "two", B1.uri, Outcome.BUILT, up=(2000, 2), down=(700, 1))
        _finished(history, "bad", B2.uri, Outcome.FAILED, up=(10, 1), error="exit code 3\nlog tail")
        _finished(history, "gone", B2.uri, Outcome.LOST, error="connection reset")
        # a hook that started an attempt and died (its pid is gone): interrupted
        interrupted_id = int(
            subprocess.run(
                [sys.executable, "-c", _DEAD_HOOK, str(state), drv("dead")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        running = history.start_build(drv_path=drv("slow"), machine=B1.uri, attempt=1)
        running.enter(Phase.BUILD)
        assert running.build_id is not None
        db.put_health(
            Down(uri=B3.uri, reason="connection refused", failures=2, since=1.0, until=4e9)
        )
    assert errors == []
    return Filled(
        state=state,
        slots=SlotDirectory(tmp_path / "current-load"),
        running_id=running.build_id,
        interrupted_id=interrupted_id,
    )


def make_sources(
    filled: Filled, machines: tuple[Machine, ...] = MACHINES, *, recent: int = 50
) -> Sources:
    return Sources(
        machines=lambda: machines,
        open_db=lambda: StateDB.open(filled.state),
        slots=filled.slots,
        recent=recent,
    )


@pytest.fixture
def sources(filled_state: Filled) -> Sources:
    return make_sources(filled_state)


@pytest.fixture
def sources_for() -> Callable[..., Sources]:
    """``sources_for(filled, machines=MACHINES, recent=50)``."""
    return make_sources


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def _get(url: str, headers: dict[str, str] | None = None, *, method: str = "GET") -> Reply:
    request = urllib.request.Request(  # noqa: S310 - our own http URL
        url, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:  # noqa: S310
            return Reply(
                status=response.status,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=response.read(),
            )
    except urllib.error.HTTPError as err:
        with err:
            return Reply(
                status=err.code,
                headers={k.lower(): v for k, v in err.headers.items()},
                body=err.read(),
            )


@contextlib.contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Run `app` in a real uvicorn on 127.0.0.1:<free port>; yields the base URL."""
    sock = bind(ListenAddress.parse("127.0.0.1:0"))
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not server.started:
            assert thread.is_alive(), "the server thread died"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{bound_port(sock)}"
    finally:
        server.should_exit = True
        thread.join(HANG_GUARD_S)
        sock.close()


@pytest.fixture
def get() -> Callable[..., Reply]:
    """``get(url, headers=None, method="GET") -> Reply``, also for 4xx and 5xx answers."""
    return _get


@pytest.fixture
def serve() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with serve(sources, token=None) as url:`` the dashboard app, served."""

    def start(
        sources: Sources, *, token: str | None = None
    ) -> contextlib.AbstractContextManager[str]:
        return serving(create_app(sources, token=token))

    return start
