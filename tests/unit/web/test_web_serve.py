"""``--listen`` parsing, the loopback/token rule, and the real ``nixdist serve`` command: one-line
errors (never a traceback), and a server that starts, prints its address and answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nixdist.errors import ConfigError
from nixdist.web import ListenAddress, bind, bound_port

NIXDIST = Path(sys.executable).with_name("nixdist")
HANG_GUARD_S = 60


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8421", "127.0.0.1", 8421, True),
        ("127.0.0.1:0", "127.0.0.1", 0, True),
        ("127.9.9.9:1", "127.9.9.9", 1, True),
        ("localhost:80", "localhost", 80, True),
        ("[::1]:8421", "::1", 8421, True),
        ("[::]:8421", "::", 8421, False),
        ("0.0.0.0:65535", "0.0.0.0", 65535, False),  # noqa: S104 - parsed, not bound
        ("192.168.1.5:8421", "192.168.1.5", 8421, False),
        ("dash.example.org:8421", "dash.example.org", 8421, False),
        (" 127.0.0.1:8421 ", "127.0.0.1", 8421, True),
    ],
)
def test_listen_parses(text: str, host: str, port: int, loopback: bool) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port, address.is_loopback) == (host, port, loopback)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("8421", "is not HOST:PORT"),
        (":8421", "is not HOST:PORT"),
        ("localhost", "is not HOST:PORT"),
        ("127.0.0.1:", "port '' is not a number from 0 to 65535"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:65536", "port '65536' is not a number"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("::1:8421", "write an IPv6 address in brackets, as [::1]:8421"),
        ("[127.0.0.1]:80", "in brackets is not an IPv6 address"),
        ("[nonsense]:80", "in brackets is not an IPv6 address"),
        ("my host:80", "is not a host name or address"),
    ],
)
def test_bad_listen_is_one_line_naming_the_option(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ListenAddress.parse(text)
    message = str(caught.value)
    assert message.startswith("--listen: ")
    assert words in message
    assert "\n" not in message


def test_render_brackets_ipv6() -> None:
    assert ListenAddress.parse("[::1]:0").render(8080) == "[::1]:8080"
    assert ListenAddress.parse("127.0.0.1:5").render() == "127.0.0.1:5"


def test_bind_a_taken_port_is_one_line() -> None:
    with bind(ListenAddress.parse("127.0.0.1:0")) as taken:
        port = bound_port(taken)
        with pytest.raises(ConfigError) as caught:
            bind(ListenAddress.parse(f"127.0.0.1:{port}"))
    assert (
        str(caught.value) == f"--listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def _nixdist(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NIXDIST), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=HANG_GUARD_S,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "nixdist: error: --listen: 'nonsense' is not HOST:PORT"),
        (
            ["--listen", "127.0.0.1:99999"],
            "nixdist: error: --listen: port '99999' is not a number from 0 to 65535",
        ),
        (
            ["--listen", "0.0.0.0:8421"],
            (
                "nixdist: error: --listen: 0.0.0.0 is not a loopback address: listening there needs"
                " a token (--token or NIXDIST_DASHBOARD_TOKEN)"
            ),
        ),
        (
            ["--listen", "[::]:8421"],
            (
                "nixdist: error: --listen: :: is not a loopback address: listening there needs"
                " a token (--token or NIXDIST_DASHBOARD_TOKEN)"
            ),
        ),
        (["--machines", "/nonexistent/machines"], "nixdist: error: /nonexistent/machines: no such"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    env.pop("NIXDIST_DASHBOARD_TOKEN", None)
    done = _nixdist("serve", *args, env=env)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_cli_taken_port_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    (tmp_path / "machines").write_text("")
    with bind(ListenAddress.parse("127.0.0.1:0")) as taken:
        port = bound_port(taken)
        done = _nixdist(
            "serve",
            "--machines",
            str(tmp_path / "machines"),
            "--listen",
            f"127.0.0.1:{port}",
            env=env,
        )
    assert done.returncode == 1
    assert done.stderr == (
        f"nixdist: error: --listen: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [str(NIXDIST), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("nixdist dashboard on http://"), process.communicate()
    return process, line.split()[-1]


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    return stderr


def test_cli_serves_with_a_token_off_loopback(tmp_path: Path) -> None:
    """Off loopback with the token from the environment: the printed address carries it."""
    (tmp_path / "machines").write_text("ssh://b1 x86_64-linux - 3\n")
    env = {
        **os.environ,
        "NIXDIST_STATE_DIR": str(tmp_path / "state"),
        "NIXDIST_DASHBOARD_TOKEN": "t0k/en",
    }
    args = ["--machines", str(tmp_path / "machines"), "--listen", "0.0.0.0:0"]
    process, url = _start(args, env)
    try:
        assert url.startswith("http://0.0.0.0:")
        assert url.endswith("/?token=t0k%2Fen")
        port = int(url.split(":")[2].split("/")[0])
        local = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(f"{local}/api/status?token=t0k%2Fen")  # noqa: S310
        with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:  # noqa: S310
            status = json.load(response)
        assert [(m["uri"], m["max_jobs"]) for m in status["machines"]] == [("ssh://b1", 3)]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{local}/api/status", timeout=HANG_GUARD_S)  # noqa: S310
        assert refused.value.code == 401
        refused.value.close()
    finally:
        stderr = _stop(process)
    assert "Traceback" not in stderr


def test_cli_reads_the_machines_file_at_each_request(tmp_path: Path) -> None:
    machines = tmp_path / "machines"
    machines.write_text("ssh://b1 x86_64-linux\n")
    env = {**os.environ, "NIXDIST_STATE_DIR": str(tmp_path / "state")}
    process, url = _start(["--machines", str(machines), "--listen", "127.0.0.1:0"], env)

    def uris() -> list[str]:
        with urllib.request.urlopen(f"{url}api/status", timeout=HANG_GUARD_S) as response:  # noqa: S310
            return [m["uri"] for m in json.load(response)["machines"]]

    try:
        assert uris() == ["ssh://b1"]
        machines.write_text("ssh://b1 x86_64-linux\nssh://b2 x86_64-linux\n")
        assert uris() == ["ssh://b1", "ssh://b2"]
    finally:
        stderr = _stop(process)
    assert "Traceback" not in stderr


def test_bound_port_of_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        sock = bind(ListenAddress.parse("[::1]:0"))
    except ConfigError as err:
        pytest.skip(f"no IPv6 loopback here: {err}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert bound_port(sock) > 0
