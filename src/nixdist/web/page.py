"""The dashboard page: one self-contained HTML document (inline CSS and JS, nothing fetched
from elsewhere) that polls ``api/status`` every second and redraws itself from the JSON.

The page holds no logic of its own beyond presentation: every number comes from
`nixdist.state.report.StatusReport.to_json`. Untrusted text (derivation names, machine URIs,
error messages) only ever reaches the DOM through ``textContent``. A ``?token=`` in the page's
address is sent on as ``Authorization: Bearer`` with each poll.

Stable hooks for tests and scrapers: ``#machines tr[data-uri]``, ``#running tr[data-drv]``,
``#recent tr[data-id]`` (with ``data-status``), and ``document.body.dataset.polls`` (polls
rendered so far) / ``dataset.error`` (the last poll's error, empty when fine).

Per-machine utilisation is shown twice: the slots in use now (a bar of used / max jobs) and a
sparkline of that fraction over the polls since the page was opened, with its average.

`CONTENT_SECURITY_POLICY` allows exactly the inline style and script below (by hash) and
requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

POLL_INTERVAL_MS: Final = 1000

_STYLE: Final = r"""
:root { --fg: #1d2430; --muted: #6a7384; --line: #e3e6ec; --bg: #f6f7f9; --card: #fff;
  --ok: #1f8a4c; --bad: #c23a2b; --warn: #b7791f; --run: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1em; align-items: baseline; padding: 12px 20px;
  background: #1d2430; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
header .summary { color: #c9d1de; }
#conn { margin-left: auto; font-size: 12px; padding: 2px 8px; border-radius: 10px; }
#conn.live { background: var(--ok); }
#conn.lost { background: var(--bad); }
main { padding: 8px 20px 24px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  margin: 14px 0; padding: 8px 14px 12px; }
h2 { font-size: 15px; margin: 6px 0 8px; }
h2 .count { color: var(--muted); font-weight: normal; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.small { font-size: 12px; color: var(--muted); }
.mono { font-family: ui-monospace, monospace; font-size: 13px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
  color: #fff; background: var(--muted); white-space: nowrap; }
.badge.built, .badge.up { background: var(--ok); }
.badge.running { background: var(--run); }
.badge.down, .badge.failed, .badge.error, .badge.timed-out { background: var(--bad); }
.badge.lost, .badge.interrupted { background: var(--warn); }
.bar { position: relative; width: 110px; height: 14px; background: var(--line);
  border-radius: 3px; overflow: hidden; display: inline-block; vertical-align: middle; }
.bar > span { position: absolute; left: 0; top: 0; bottom: 0; background: var(--run); }
.bar.full > span { background: var(--warn); }
svg.spark { width: 120px; height: 22px; vertical-align: middle; }
svg.spark polyline { fill: none; stroke: var(--run); stroke-width: 1.5; }
.err { color: var(--bad); max-width: 38em; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.empty { color: var(--muted); margin: 4px 0; }
#problem { color: var(--bad); margin: 8px 0 0; }
"""

_BODY: Final = r"""
<header>
  <h1>nixdist</h1>
  <span class="summary" id="summary">loading…</span>
  <span id="conn">connecting</span>
</header>
<main>
  <p id="problem" hidden></p>
  <section>
    <h2>Machines <span class="count" id="machines-count"></span></h2>
    <table id="machines">
      <thead><tr>
        <th>machine</th><th>state</th><th>slots in use</th><th>utilisation</th>
        <th class="num">our builds</th><th>builder (last probe)</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="machines-empty" hidden>No machines: the machines file is empty.</p>
  </section>
  <section>
    <h2>Running builds <span class="count" id="running-count"></span></h2>
    <table id="running">
      <thead><tr>
        <th>derivation</th><th>machine</th><th class="num">try</th><th>phase</th>
        <th class="num">elapsed</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="running-empty">Nothing is building remotely.</p>
  </section>
  <section>
    <h2>Recent builds <span class="count" id="recent-count"></span></h2>
    <table id="recent">
      <thead><tr>
        <th>started</th><th>derivation</th><th>machine</th><th class="num">try</th>
        <th>status</th><th class="num">upload</th><th class="num">build</th>
        <th class="num">download</th><th class="num">total</th><th>error</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="recent-empty">No finished builds yet.</p>
  </section>
</main>
"""

_SCRIPT: Final = r"""
"use strict";
const POLL_MS = __POLL_MS__;
const SPARK_POINTS = 180;
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const history = new Map();  // machine uri -> fractions of slots in use, one per poll
let polls = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function seconds(s) {
  if (s === null || s === undefined) return "\u2013";
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 60) return s.toFixed(1) + " s";
  const t = Math.round(s);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), r = t % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function drvName(path) {
  const base = path.slice(path.lastIndexOf("/") + 1).replace(/\.drv$/, "");
  const dash = base.indexOf("-");
  return dash === 32 ? base.slice(dash + 1) : base;
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || text) }, text);
}

function bar(used, max) {
  const fraction = max > 0 ? Math.min(1, used / max) : 0;
  const fill = el("span");
  fill.style.width = (fraction * 100).toFixed(1) + "%";
  return el("span", { class: "bar" + (max > 0 && used >= max ? " full" : "") }, fill);
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${SPARK_POINTS - 1} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(ns, "polyline");
  const start = SPARK_POINTS - values.length;
  line.setAttribute("points",
    values.map((v, i) => `${start + i},${(19 - v * 18).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

function machineState(m) {
  const cell = el("td");
  if (m.down) {
    const times = m.down.failures > 1 ? `${m.down.failures} times, ` : "";
    cell.append(badge("down"), " ",
      el("span", { class: "small" },
        `${m.down.reason} (${times}retrying in ${Math.round(m.down.retry_in)} s)`));
  } else {
    cell.append(badge("up"));
    if (m.last_failure) {
      cell.append(" ", el("span", { class: "small", title: m.last_failure.reason },
        `failed ${clock(m.last_failure.since)}`));
    }
  }
  return cell;
}

function probeCell(m) {
  const p = m.probe;
  if (!p) return el("td", { class: "small" }, "not probed yet");
  const known = (v, show) => (v === null || v === undefined ? "?" : show(v));
  const others = p.other_builds ? ` (${p.other_builds} from other clients)` : "";
  const cell = el("td", {},
    el("div", {}, `${known(p.running_builds, String)} running${others}, ` +
      `load ${known(p.load_per_core, (v) => v.toFixed(2))}/core`),
    el("div", { class: "small" },
      `disk ${known(p.disk_free, bytes)} free of ${known(p.disk_total, bytes)}, ` +
      `mem ${known(p.mem_available, bytes)} free, probed ${seconds(p.age)} ago`));
  if (p.problem) cell.append(el("div", { class: "small" }, `no full report: ${p.problem}`));
  return cell;
}

function renderMachines(machines) {
  const body = document.querySelector("#machines tbody");
  const rows = [];
  for (const m of machines) {
    const values = history.get(m.uri) || [];
    values.push(m.max_jobs > 0 ? Math.min(1, m.slots_in_use / m.max_jobs) : 0);
    if (values.length > SPARK_POINTS) values.shift();
    history.set(m.uri, values);
    const average = values.reduce((a, b) => a + b, 0) / values.length;
    const features = m.supported_features.concat(m.mandatory_features.map((f) => f + "!"));
    rows.push(el("tr", { "data-uri": m.uri },
      el("td", {}, el("div", { class: "mono" }, m.uri),
        el("div", { class: "small" },
          m.systems.join(", ") + (features.length ? " · " + features.join(", ") : ""))),
      machineState(m),
      el("td", { class: "num" }, bar(m.slots_in_use, m.max_jobs),
        ` ${m.slots_in_use} / ${m.max_jobs}`),
      el("td", { class: "num", title: "slots in use since this page was opened" },
        sparkline(values), ` ${(average * 100).toFixed(0)} %`),
      el("td", { class: "num" }, m.running_builds),
      probeCell(m)));
  }
  body.replaceChildren(...rows);
  document.getElementById("machines-empty").hidden = machines.length > 0;
  const up = machines.filter((m) => m.up).length;
  document.getElementById("machines-count").textContent = `${up} of ${machines.length} up`;
}

function derivationCell(b) {
  return el("td", { class: "mono", title: b.drv_path }, drvName(b.drv_path));
}

function renderRunning(builds) {
  const rows = builds.map((b) =>
    el("tr", { "data-id": b.id, "data-drv": b.drv_path, "data-machine": b.machine },
      derivationCell(b),
      el("td", { class: "mono" }, b.machine),
      el("td", { class: "num" }, b.attempt),
      el("td", {}, badge(b.phase, "running")),
      el("td", { class: "num" }, seconds(b.elapsed))));
  document.querySelector("#running tbody").replaceChildren(...rows);
  document.getElementById("running-empty").hidden = builds.length > 0;
  document.getElementById("running-count").textContent = builds.length ? `(${builds.length})` : "";
}

function phase(p) {
  if (p.seconds === null) return "\u2013";
  return seconds(p.seconds) + (p.bytes ? " · " + bytes(p.bytes) : "");
}

function renderRecent(builds) {
  const rows = builds.map((b) => {
    const error = b.error || "";
    return el("tr", { "data-id": b.id, "data-drv": b.drv_path, "data-status": b.status },
      el("td", { class: "num" }, clock(b.started)),
      derivationCell(b),
      el("td", { class: "mono" }, b.machine),
      el("td", { class: "num" }, b.attempt),
      el("td", {}, badge(b.status)),
      el("td", { class: "num" }, phase(b.upload)),
      el("td", { class: "num" }, phase(b.build)),
      el("td", { class: "num" }, phase(b.download)),
      el("td", { class: "num" }, seconds(b.duration)),
      el("td", { class: "err", title: error }, error.split("\n")[0]));
  });
  document.querySelector("#recent tbody").replaceChildren(...rows);
  document.getElementById("recent-empty").hidden = builds.length > 0;
  document.getElementById("recent-count").textContent = builds.length
    ? `(last ${builds.length})` : "";
}

function render(status) {
  renderMachines(status.machines);
  renderRunning(status.running);
  renderRecent(status.recent);
  document.getElementById("summary").textContent =
    `${status.machines.length} machines · ${status.running.length} running · ` +
    `updated ${clock(status.time)}`;
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.textContent = text;
  problem.hidden = !text;
  const conn = document.getElementById("conn");
  conn.textContent = text ? "disconnected" : "live";
  conn.className = text ? "lost" : "live";
  document.body.dataset.error = text;
}

async function poll() {
  try {
    const response = await fetch("api/status", { headers, cache: "no-store" });
    if (!response.ok) {
      const text = await response.text();
      throw new Error(`${response.status} ${response.statusText}: ${text.slice(0, 300)}`);
    }
    render(await response.json());
    polls += 1;
    document.body.dataset.polls = String(polls);
    showProblem("");
  } catch (err) {
    showProblem(String(err && err.message ? err.message : err));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
""".replace("__POLL_MS__", str(POLL_INTERVAL_MS))


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


PAGE: Final = (
    "<!doctype html>\n"
    '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>nixdist dashboard</title>\n"
    '<link rel="icon" href="data:,">\n'
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n"
    "</body>\n</html>\n"
)

CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
