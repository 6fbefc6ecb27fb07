"""The dashboard app over real HTTP: /api/status is the status report, the page is
self-contained and locked down, the token and loopback-host gate, errors as 503."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import TYPE_CHECKING

import pytest

from nixdist.errors import ConfigError
from nixdist.model.machines import Machine
from nixdist.state.db import StateDB
from nixdist.state.report import status_report
from nixdist.state.rows import ProbeRow
from nixdist.transport.probe import BuilderReport
from nixdist.web import Sources
from nixdist.web.app import host_name

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from typing import Any

    from .conftest import Filled, Reply

    Serve = Callable[..., AbstractContextManager[str]]
    Get = Callable[..., Reply]


def _without_clock(data: dict[str, Any]) -> dict[str, Any]:
    """The report minus what moves with the clock (report time, ages, elapsed)."""
    data = json.loads(json.dumps(data))
    data.pop("time")
    for m in data["machines"]:
        for key in ("down", "last_failure"):
            if m[key] is not None:
                m[key].pop("retry_in")
    for b in data["running"] + data["recent"]:
        b.pop("elapsed")
    return data


def test_api_status_is_the_status_report(
    serve: Serve, get: Get, sources: Sources, filled_state: Filled
) -> None:
    with serve(sources) as url:
        reply = get(f"{url}/api/status")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    served = json.loads(reply.body)
    with StateDB.open(filled_state.state) as db:
        expected = status_report(sources.machines(), db, filled_state.slots, recent=50).to_json()
    assert _without_clock(served) == _without_clock(expected)
    # and what that means, spelled out
    assert [m["uri"] for m in served["machines"]] == ["ssh://b1", "ssh://b2", "ssh://b3"]
    assert [m["up"] for m in served["machines"]] == [True, True, False]
    assert served["machines"][2]["down"]["reason"] == "connection refused"
    assert [b["id"] for b in served["running"]] == [filled_state.running_id]
    assert served["running"][0]["phase"] == "build"
    recent = {b["drv_path"].rsplit("-", 1)[1]: b for b in served["recent"]}
    assert {name: b["status"] for name, b in recent.items()} == {
        "one.drv": "built",
        "two.drv": "built",
        "bad.drv": "failed",
        "gone.drv": "lost",
        "dead.drv": "interrupted",
    }
    assert recent["two.drv"]["upload"] == {"seconds": 0.25, "bytes": 2000, "paths": 2}
    assert recent["bad.drv"]["error"] == "exit code 3\nlog tail"


def test_api_status_recent_limit(
    serve: Serve, get: Get, filled_state: Filled, sources_for: Callable[..., Sources]
) -> None:
    with serve(sources_for(filled_state, recent=2)) as url:
        served = json.loads(get(f"{url}/api/status").body)
    assert len(served["recent"]) == 2
    assert len(served["running"]) == 1


def test_slots_held_now_show(serve: Serve, get: Get, sources: Sources) -> None:
    b1 = sources.machines()[0]
    probe = sources.slots.try_slot(b1)  # hold one slot of b1, as a hook would
    assert probe.lease is not None
    with probe.lease, serve(sources) as url:
        served = json.loads(get(f"{url}/api/status").body)
    assert [m["slots_in_use"] for m in served["machines"]] == [1, 0, 0]


def test_without_a_database_the_machines_still_show(
    serve: Serve, get: Get, sources: Sources
) -> None:
    no_db = Sources(machines=sources.machines, open_db=lambda: None, slots=sources.slots)
    with serve(no_db) as url:
        served = json.loads(get(f"{url}/api/status").body)
    assert [(m["uri"], m["up"]) for m in served["machines"]] == [
        ("ssh://b1", True),
        ("ssh://b2", True),
        ("ssh://b3", True),
    ]
    assert served["running"] == served["recent"] == []


def test_non_finite_numbers_become_null(serve: Serve, get: Get, sources: Sources) -> None:
    report = BuilderReport(
        running_builds=0,
        load1=float("inf"),  # SQLite keeps infinities (a NaN would be NULL)
        cores=1,
        disk_free=1,
        disk_total=2,
        mem_available=3,
    )
    with sources.db() as db:
        assert db is not None
        db.put_probe(ProbeRow(uri="ssh://b1", time=1.0, local_slots=0, report=report))
    with serve(sources) as url:
        reply = get(f"{url}/api/status")
    assert reply.status == 200
    assert json.loads(reply.body)["machines"][0]["probe"]["load1"] is None


def test_undecodable_bytes_in_a_uri_stay_valid_json(
    serve: Serve, get: Get, filled_state: Filled, sources_for: Callable[..., Sources]
) -> None:
    odd = Machine(uri="ssh://b\udcff", systems=("x86_64-linux",))  # surrogate-escaped byte
    with serve(sources_for(filled_state, (odd,))) as url:
        reply = get(f"{url}/api/status")
    assert reply.status == 200
    assert json.loads(reply.body)["machines"][0]["uri"] == "ssh://b\udcff"


def test_errors_become_503_with_the_message(serve: Serve, get: Get, filled_state: Filled) -> None:
    def broken() -> tuple[Machine, ...]:
        raise ConfigError("field 4 (max jobs): 'x' is not a number", file="/etc/nix/machines")

    sources = Sources(machines=broken, open_db=lambda: None, slots=filled_state.slots)
    with serve(sources) as url:
        status = get(f"{url}/api/status")
        metrics = get(f"{url}/metrics")
    assert status.status == 503
    assert json.loads(status.body) == {
        "error": "/etc/nix/machines: field 4 (max jobs): 'x' is not a number"
    }
    assert metrics.status == 503
    assert "max jobs" in metrics.text


def test_page_is_self_contained_and_locked_down(serve: Serve, get: Get, sources: Sources) -> None:
    with serve(sources) as url:
        reply = get(f"{url}/")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    page = reply.text
    # nothing is fetched from elsewhere: no external URL but the SVG namespace name
    assert set(re.findall(r"https?://[^\s\"'`]+", page)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=\"(?!data:)", page)
    assert 'fetch("api/status"' in page
    # the policy allows exactly the inline script and style, by hash
    csp = reply.headers["content-security-policy"]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert reply.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/", "/api/status", "/metrics"])
def test_token_is_required_everywhere(serve: Serve, get: Get, sources: Sources, path: str) -> None:
    with serve(sources, token="s3cret") as url:  # noqa: S106 - a test token
        missing = get(f"{url}{path}")
        wrong = get(f"{url}{path}", {"Authorization": "Bearer nope"})
        wrong_query = get(f"{url}{path}?token=nope")
        bearer = get(f"{url}{path}", {"Authorization": "Bearer s3cret"})
        lower = get(f"{url}{path}", {"Authorization": "bearer s3cret"})
        query = get(f"{url}{path}?token=s3cret")
        foreign_host = get(f"{url}{path}?token=s3cret", {"Host": "dash.example.org"})
    assert missing.status == wrong.status == wrong_query.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "token" in missing.text
    assert bearer.status == lower.status == query.status == 200
    assert foreign_host.status == 200  # with a token, any Host name may be used


def test_token_in_query_is_url_decoded(serve: Serve, get: Get, sources: Sources) -> None:
    with serve(sources, token="a b&c=d") as url:  # noqa: S106 - a test token
        assert get(f"{url}/api/status?token=a%20b%26c%3Dd").status == 200
        assert get(f"{url}/api/status?token=a").status == 401


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("127.0.0.1", 200),
        ("127.1.2.3", 200),
        ("[::1]", 200),
        ("LOCALHOST", 200),
        ("evil.example", 421),
        ("10.0.0.1", 421),
        ("", 421),
    ],
)
def test_without_token_only_loopback_host_names(
    serve: Serve, get: Get, sources: Sources, host: str, status: int
) -> None:
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 sends its own name as Host."""
    with serve(sources) as url:
        port = url.rsplit(":", 1)[1]
        reply = get(f"{url}/api/status", {"Host": f"{host}:{port}" if host else ""})
    assert reply.status == status


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8421", "localhost"),
        ("LocalHost", "localhost"),
        ("[::1]:8421", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_unknown_paths_and_methods(serve: Serve, get: Get, sources: Sources) -> None:
    with serve(sources) as url:
        assert get(f"{url}/nope").status == 404
        assert get(f"{url}/api/status", method="POST").status == 405
        assert get(f"{url}/metrics", method="DELETE").status == 405
