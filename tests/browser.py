"""A small headless-Chromium driver for tests, over the DevTools protocol on a pipe (stdlib only).

Chromium started with ``--remote-debugging-pipe`` reads DevTools commands on its fd 3 and
writes replies and events on its fd 4, each message one JSON object followed by a NUL byte.
The pipes are made with `os.pipe` and put on fds 3 and 4 by a ``bash`` that then execs
Chromium (``exec … 3<&R 4>&W``): `subprocess` can pass descriptors but not renumber them,
and dash cannot name a descriptor above 9.

Use::

    with Browser.start(tmp_path) as browser:
        browser.open("http://127.0.0.1:8421/")
        browser.wait_for("document.body.dataset.polls >= 1")
        rows = browser.evaluate("document.querySelectorAll('tr').length")
        browser.screenshot(tmp_path / "page.png")

Chromium runs in its own session (process group) and is killed with it on `close`, whatever
state it is in; its stderr goes to ``chromium.log`` in the profile directory for diagnosis.
Every wait is bounded by `HANG_GUARD_S`, a guard against a hang and never a measurement.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from types import TracebackType

CHROMIUM = "chromium"
HANG_GUARD_S = 120.0
WINDOW = (1280, 900)
_FIRST_FREE_FD = 10


class BrowserError(Exception):
    """Chromium failed, went away, or a page did something unexpected."""


class Browser:
    """One headless Chromium with one page (tab)."""

    def __init__(self, process: subprocess.Popen[bytes], to_chrome: int, from_chrome: int) -> None:
        self._process = process
        self._to = to_chrome
        self._from = from_chrome
        self._ids = itertools.count(1)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._session: str | None = None
        self._profile: Path | None = None
        self._own_profile: tempfile.TemporaryDirectory[str] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, profile_parent: Path | None = None) -> Self:
        """Start Chromium (a new profile under `profile_parent`) and open one blank page."""
        executable = shutil.which(CHROMIUM)
        if executable is None:
            raise BrowserError(f"{CHROMIUM} is not on PATH (scripts/setup.sh installs it)")
        own = None
        if profile_parent is None:
            own = tempfile.TemporaryDirectory(prefix="nixdist-chromium-")
            profile = Path(own.name)
        else:
            profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=profile_parent))
        to_read, to_write = _high_pipe()  # Chromium reads commands from to_read (its fd 3)
        from_read, from_write = _high_pipe()  # and writes to from_write (its fd 4)
        args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "about:blank",
        ]
        script = f'exec "$0" "$@" 3<&{to_read} 4>&{from_write} {to_read}<&- {from_write}>&-'
        with (profile / "chromium.log").open("wb") as log:
            process = subprocess.Popen(
                ["/bin/bash", "-c", script, executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(to_read, from_write),
                start_new_session=True,
            )
        os.close(to_read)
        os.close(from_write)
        browser = cls(process, to_write, from_read)
        browser._profile = profile
        browser._own_profile = own
        try:
            browser._attach()
        except BaseException:
            browser.close()
            raise
        return browser

    def _attach(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self._session = attached["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        width, height = WINDOW
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def close(self) -> None:
        """Ask Chromium to quit, then kill its whole process group; never raises."""
        with contextlib.suppress(Exception):
            if self._process.poll() is None:
                self.send("Browser.close", session=False, timeout=5.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=HANG_GUARD_S)
        for fd in (self._to, self._from):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to = self._from = -1
        if self._own_profile is not None:
            self._own_profile.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- pages --------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate to `url` and wait until its document has loaded."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of the JavaScript `expression` in the page (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str | None = None) -> Any:
        """Poll `expression` until it is truthy; returns its value."""
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"gave up waiting for {what or expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page (not only the window) to `path`."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    # -- the protocol -------------------------------------------------------------------------

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = True,
        timeout: float = HANG_GUARD_S,
    ) -> dict[str, Any]:
        """Send one DevTools command (to the page's session unless `session` is False) and
        return its result; events read meanwhile are kept in `events`."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        if params:
            message["params"] = params
        if session and self._session is not None:
            message["sessionId"] = self._session
        self._write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._events.append(reply)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._events

    def log_tail(self, size: int = 4000) -> str:
        """The end of Chromium's own log, for failure messages."""
        if self._profile is None:
            return ""
        try:
            return (self._profile / "chromium.log").read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._to, view)
            except BrokenPipeError:
                raise BrowserError(f"chromium went away:\n{self.log_tail()}") from None
            view = view[written:]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from chromium")
            ready, _, _ = select.select([self._from], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium went away:\n{self.log_tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        decoded: dict[str, Any] = json.loads(message)
        return decoded


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above fd 4 (so the shell's 3<&R 4>&W never clobbers them),
    close-on-exec (`subprocess` passes the two it should)."""
    read_end, write_end = os.pipe()
    try:
        high = (
            fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE_FD),
            fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE_FD),
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    return high
