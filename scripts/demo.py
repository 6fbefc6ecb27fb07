"""`make demo`: a real, distributed ``nix-build`` on a local farm of three builders.

What it does, every time (as root, on Linux; `make demo` runs it through scripts/demo.sh):

1. Brings up the demo farm with `nixdist.farm` in ``$DEMO_FARM_DIR`` (default
   /var/lib/nixdist/demo-farm; ssh aliases ``demo-b1`` …). Idempotent: builders already
   running are reused, stopped ones are started::

       b1  host system, supports big-parallel            2 jobs
       b2  host system + aarch64-linux (extra-platforms)  2 jobs
       b3  host system, mandatory feature benchmark       1 job

2. Instantiates examples/demo.nix with a fresh salt (so all 34 derivations really build) and
   runs the real ``nix-build`` on it with ``-j0`` (nothing may build here), no substituters,
   ``--option build-hook <venv>/bin/nixdist-hook``, ``--builders @<farm>/machines`` and
   ``NIX_SSHOPTS="-F <farm>/ssh_config"``. Nix's own output is streamed as it comes (and kept).
   Also ``--option build-poll-interval 1``: Nix retries a derivation whose builders were all
   busy ("waiting for a machine", the hook answered postpone) only every build-poll-interval
   seconds, 5 by default, which would make this demo of half-second builds wait 25 s instead
   of 8 s (the same happens with Nix's own build-remote). ``DEMO_POLL_INTERVAL=5`` shows it.

3. Prints which builder built each derivation, from two independent witnesses: Nix's own
   ``building '<drv>' on '<uri>'`` lines, and the builders' stores (a store marks a path it
   built itself as "ultimate"; read from each builder's own store database).
   Also: what each derivation needs, which builders could take it, a count per builder and
   the build's wall time.

With ``DEMO_NIX=2.34`` (``make demo NIX=2.34``; also 2.8 and 2.26) the client side —
``nix-instantiate``, ``nix-build`` and the queries of the client's store — runs as a client of
that Nix (``Farm.client_argv``, as ``nixdist farm client --nix 2.34 -- …``: chrooted in its Debian
root filesystem with a store of its own under the farm directory), with the client's
``nixdist-hook`` (our hook under that root filesystem's python3). The builders do not change.

4. Exits 0 only if nix-build succeeded, every derivation was built on exactly one builder
   that was allowed to take it, both witnesses agree, and nothing was built locally — and
   step 5 succeeded:

5. Builds the same graph again (a fresh salt) with ``nixdist build``, which schedules the
   whole graph itself (no hook, nothing asked of Nix one derivation at a time), showing its
   live board, and prints both wall times.

The farm is LEFT RUNNING afterwards, so the next `make demo` starts at once; with
``DEMO_KEEP_FARM=0`` it is stopped at the end instead (its stores are kept either way). Look
further, or stop it, with::

    .venv/bin/nixdist farm status --dir /var/lib/nixdist/demo-farm
    .venv/bin/nixdist farm down --dir /var/lib/nixdist/demo-farm

Environment: DEMO_FARM_DIR (farm directory), DEMO_KEEP_FARM (1 = keep running, the default;
0 = stop at the end), DEMO_WORK (seconds each derivation sleeps, default 0.5),
DEMO_POLL_INTERVAL (Nix's build-poll-interval, default 5 as in Nix), DEMO_NIX (the client's Nix
version; default the host's). Colours only on a terminal (and
never with NO_COLOR set); piped output is plain text, with tables 120 columns wide.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from nixdist.errors import NixdistError
from nixdist.farm import BuilderSpec, Farm, host_system, make_spec
from nixdist.farm.client import client_dir
from nixdist.farm.releases import KNOWN_VERSIONS
from nixdist.farm.rootfs import ensure_rootfs_info

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixdist.model.machines import Machine

REPO: Final = Path(__file__).resolve().parents[1]
DEMO_NIX: Final = REPO / "examples" / "demo.nix"
VENV_BIN: Final = Path(sys.executable).parent  # not resolved: the venv's own bin/
HOOK: Final = VENV_BIN / "nixdist-hook"
NIXDIST: Final = VENV_BIN / "nixdist"
DEFAULT_FARM_DIR: Final = Path("/var/lib/nixdist/demo-farm")
DASHBOARD: Final = "127.0.0.1:8421"
DASHBOARD_START_S: Final = 20.0
ALIAS_PREFIX: Final = "demo-"
OTHER_SYSTEM: Final = "x86_64-linux" if host_system() == "aarch64-linux" else "aarch64-linux"
EXPECTED_DERIVATIONS: Final = 34
PIPED_WIDTH: Final = 120
NIX_COMMAND: Final = ("nix", "--extra-experimental-features", "nix-command")
TOOLS: Final = (
    "nix-build",
    "nix-instantiate",
    "nix",
    "ssh",
    "ssh-keygen",
    "unshare",
    "nsenter",
    "setsid",
)

#: Nix's line when a derivation starts building: on a remote machine (`on '<uri>'`) or here.
BUILDING_RE: Final = re.compile(r"^building '(/nix/store/[^']+\.drv)'(?: on '([^']+)')?\.\.\.$")

#: The colour of each builder in the streamed log and the tables (terminal only).
BUILDER_STYLES: Final = {"b1": "bold cyan", "b2": "bold magenta", "b3": "bold yellow"}


def demo_builders() -> tuple[BuilderSpec, ...]:
    return (
        make_spec("b1", features=["big-parallel"], jobs=2),
        make_spec("b2", systems=[host_system(), OTHER_SYSTEM], jobs=2),
        make_spec("b3", mandatory=["benchmark"], jobs=1),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """One derivation of the demo graph, read from the .drv itself."""

    drv: str
    name: str
    system: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def needs(self) -> str:
        """What restricts where it may build: features and a non-host system, or "any"."""
        parts = list(self.features)
        if self.system != host_system():
            parts.append(f"system {self.system}")
        return ", ".join(parts) or "any builder"


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRun:
    """What nix-build did, from its exit status and its own log lines."""

    returncode: int
    seconds: float
    remote: dict[str, str]  # drv -> store URI it was built on
    started_at: dict[str, float]  # drv -> seconds after nix-build started, when Nix said so
    local: tuple[str, ...]  # drvs Nix built on this machine
    stdout: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    planned: Planned
    eligible: tuple[str, ...]
    nix_says: str | None  # builder name (or the URI if unknown), "local", or None
    started: float | None  # seconds after nix-build started
    stores_say: tuple[str, ...]  # builders whose store has every output as "ultimate"
    problem: str | None


# ------------------------------------------------------------------ small helpers


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort ``lib-2`` before ``lib-10``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)
    )


def display_path(path: Path) -> str:
    """`path` relative to the current directory when it is below it (shorter to copy)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def builder_text(name: str | None) -> Text:
    if name is None:
        return Text("-", style="dim")
    return Text(name, style=BUILDER_STYLES.get(name, "bold red" if name == "local" else ""))


def eligible_builders(
    planned: Planned, machines: Sequence[Machine], names: Mapping[str, str]
) -> tuple[str, ...]:
    """Nix's rule for a remote machine: it lists the system, supports every required
    feature, and every one of its mandatory features is required."""
    required = frozenset(planned.features)
    return tuple(
        names[m.uri]
        for m in machines
        if planned.system in m.systems
        and required <= m.supported_features | m.mandatory_features
        and m.mandatory_features <= required
    )


def preflight() -> str | None:
    """Why the demo cannot run here, or None."""
    if sys.platform != "linux":
        return "the demo farm needs Linux (mount namespaces)"
    if os.geteuid() != 0:
        return "the demo farm needs root (it runs sshd and mounts a store per builder)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin") is None:
        missing.append("sshd")
    if missing:
        return f"missing {', '.join(missing)} (run: make setup)"
    if not HOOK.exists():
        return f"{HOOK} is missing (run: make setup)"
    return None


# ------------------------------------------------------------------ the steps


def ensure_farm(directory: Path) -> tuple[Farm, bool]:
    """The demo farm, up; True if every builder was already running (reused)."""
    farm = Farm(directory, alias_prefix=ALIAS_PREFIX)
    specs = demo_builders()
    reused = False
    if farm.state_file.exists():
        try:
            before = {s.name: s for s in farm.status()}
        except NixdistError:
            before = {}
        reused = (
            farm.alias_prefix == ALIAS_PREFIX
            and set(before) == {s.name for s in specs}
            and all(before[s.name].spec == s and before[s.name].pid is not None for s in specs)
        )
    farm.up(specs)
    return farm, reused


def client_cmd(farm: Farm, nix: str | None, argv: Sequence[str]) -> list[str]:
    """`argv`, a command of the client side, as the client runs it: as is with the host's Nix,
    else as a farm client of Nix `nix` (in the checkout, which it sees at the same path)."""
    return list(argv) if nix is None else farm.client_argv(nix, argv, cwd=REPO)


def shown_cmd(farm: Farm, nix: str | None, argv: Sequence[str]) -> str:
    """`argv` as a user would type it (``nixdist farm client … --`` for a farm client)."""
    if nix is None:
        return shlex.join(argv)
    client = [display_path(NIXDIST), "farm", "client", "--dir", str(farm.directory), "--nix", nix]
    return f"{shlex.join(client)} -- {shlex.join(argv)}"


def instantiate(farm: Farm, nix: str | None, salt: str, work: str) -> str:
    argv = ["nix-instantiate", str(DEMO_NIX), "--argstr", "salt", salt, "--argstr", "work", work]
    result = subprocess.run(
        client_cmd(farm, nix, argv), capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        raise NixdistError(f"nix-instantiate {DEMO_NIX} failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def plan(farm: Farm, nix: str | None, top_drv: str) -> dict[str, Planned]:
    """Every derivation in `top_drv`'s closure, with what it needs."""
    # `show-derivation` is `derivation show` since Nix 2.15, and the old name still works (a
    # deprecation warning on stderr); Nix 2.8 knows only the old one.
    argv = [*NIX_COMMAND, "show-derivation", "--recursive", top_drv]
    result = subprocess.run(
        client_cmd(farm, nix, argv), capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        raise NixdistError(f"nix show-derivation failed:\n{result.stderr.strip()}")
    planned: dict[str, Planned] = {}
    for drv, info in shown_derivations(json.loads(result.stdout)).items():
        env = info.get("env", {})
        planned[drv] = Planned(
            drv=drv,
            name=env.get("name", drv.rsplit("-", 1)[-1]),
            system=info["system"],
            features=tuple(env.get("requiredSystemFeatures", "").split()),
            outputs=tuple(store_path(out["path"]) for out in info["outputs"].values()),
        )
    return planned


def shown_derivations(data: dict[str, Any]) -> dict[str, Any]:
    """`nix show-derivation`'s JSON as drv path -> derivation. Nix 2.33+ (format version 4)
    nests them under ``derivations`` and names store paths without ``/nix/store/``."""
    drvs = data["derivations"] if isinstance(data.get("derivations"), dict) else data
    return {store_path(drv): info for drv, info in drvs.items()}


def store_path(name: str) -> str:
    return name if name.startswith("/") else f"/nix/store/{name}"


def hook_for(farm: Farm, nix: str | None) -> Path:
    """The nixdist-hook of the client: the venv's, or a farm client's (an absolute path, which
    Nix 2.8 needs; the farm directory is seen at the same path inside)."""
    return HOOK if nix is None else client_dir(farm.directory, nix) / "bin" / "nixdist-hook"


def build_argv(farm: Farm, salt: str, work: str, poll: str, *, hook: Path) -> list[str]:
    return [
        "nix-build",
        str(DEMO_NIX),
        "--argstr",
        "salt",
        salt,
        "--argstr",
        "work",
        work,
        "--no-out-link",
        "--option",
        "build-poll-interval",
        poll,
        "-j0",
        "--option",
        "substituters",
        "",
        "--option",
        "build-hook",
        str(hook),
        "--builders",
        f"@{farm.machines_file}",
    ]


def demo_env(farm: Farm) -> dict[str, str]:
    """The environment of the demo's nix-build, status and dashboard: the farm's ssh options
    and a state directory of the demo's own, so `nixdist status` shows only its builds."""
    env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE_SYSTEMS"}
    env.update(farm.env())
    env["NIXDIST_STATE_DIR"] = str(farm.directory / "nixdist-state")
    return env


def run_build(
    console: Console, farm: Farm, argv: Sequence[str], names: Mapping[str, str]
) -> BuildRun:
    """Run nix-build, echo every line of its log as it comes, and keep what it says."""
    env = demo_env(farm)
    remote: dict[str, str] = {}
    local: list[str] = []
    started_at: dict[str, float] = {}
    started = time.monotonic()
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    ) as proc:
        assert proc.stderr is not None  # noqa: S101 - stderr=PIPE
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            console.print(log_line(line, names), highlight=False, markup=False, soft_wrap=True)
            if match := BUILDING_RE.match(line):
                drv, uri = match.groups()
                started_at[drv] = time.monotonic() - started
                if uri is None:
                    local.append(drv)
                else:
                    remote[drv] = uri
        stdout = proc.stdout.read().decode(errors="replace")
        returncode = proc.wait()
    return BuildRun(
        returncode=returncode,
        seconds=time.monotonic() - started,
        remote=remote,
        started_at=started_at,
        local=tuple(local),
        stdout=stdout,
    )


def log_line(line: str, names: Mapping[str, str]) -> Text:
    """Nix's line, verbatim; on a terminal the builder it names is coloured."""
    text = Text(line)
    if match := BUILDING_RE.match(line):
        uri = match.group(2)
        if uri is None:
            text.stylize("bold red")
        else:
            start = line.rindex(uri)
            text.stylize(BUILDER_STYLES.get(names.get(uri, ""), "bold"), start, start + len(uri))
    elif line.startswith("error:"):
        text.stylize("bold red")
    return text


def ultimate_paths(farm: Farm) -> dict[str, frozenset[str]]:
    """For every builder, the store paths it built itself ("ultimate" in its own store)."""
    return {name: frozenset(farm.built_paths(name)) for name in farm.names()}


def make_rows(
    planned: Mapping[str, Planned],
    run: BuildRun,
    stores: Mapping[str, frozenset[str]],
    machines: Sequence[Machine],
    names: Mapping[str, str],
) -> list[Row]:
    rows = []
    local = set(run.local)
    for p in planned.values():
        eligible = eligible_builders(p, machines, names)
        uri = run.remote.get(p.drv)
        nix_says = "local" if p.drv in local else (names.get(uri, uri) if uri else None)
        stores_say = tuple(
            sorted(n for n, paths in stores.items() if all(o in paths for o in p.outputs))
        )
        problem = None
        if nix_says is None:
            problem = "Nix never started building it"
        elif nix_says == "local":
            problem = "built on this machine"
        elif nix_says not in eligible:
            problem = f"{nix_says} may not build it"
        elif stores_say != (nix_says,):
            problem = f"Nix says {nix_says}, builder stores say {' '.join(stores_say) or 'nobody'}"
        rows.append(
            Row(
                planned=p,
                eligible=eligible,
                nix_says=nix_says,
                started=run.started_at.get(p.drv),
                stores_say=stores_say,
                problem=problem,
            )
        )
    order = {"big-parallel": 0, f"system {OTHER_SYSTEM}": 1, "benchmark": 2, "any builder": 9}
    rows.sort(key=lambda r: (order.get(r.planned.needs, 5), natural_key(r.planned.name)))
    return rows


# ------------------------------------------------------------------ output


def farm_table(farm: Farm) -> Table:
    table = Table(title=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in ("builder", "store URI", "systems", "features", "jobs", "state", "ssh port"):
        table.add_column(column)
    for s in farm.status():
        features = sorted(s.spec.supported_features) + [
            f"{f} (mandatory)" for f in sorted(s.spec.mandatory_features)
        ]
        table.add_row(
            builder_text(s.name),
            f"ssh://{s.alias}",
            ", ".join(s.spec.systems),
            ", ".join(features) or "-",
            str(s.spec.max_jobs),
            str(s.state),
            str(s.port),
        )
    return table


def rows_table(rows: Sequence[Row]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("derivation")
    table.add_column("needs")
    table.add_column("allowed on")
    table.add_column("started", justify="right")
    table.add_column("Nix log: built on")
    table.add_column("stores: built by")
    table.add_column("check")
    previous = None
    for row in rows:
        if previous is not None and row.planned.needs != previous:
            table.add_section()
        previous = row.planned.needs
        verdict = (
            Text("ok", style="green")
            if row.problem is None
            else Text(row.problem, style="bold red")
        )
        stores = Text(" ").join(builder_text(n) for n in row.stores_say) or Text(
            "nobody", style="dim"
        )
        table.add_row(
            row.planned.name,
            row.planned.needs,
            " ".join(row.eligible) or "nobody",
            "-" if row.started is None else f"{row.started:.1f} s",
            builder_text(row.nix_says),
            stores,
            verdict,
        )
    return table


def count_table(rows: Sequence[Row], farm: Farm) -> Table:
    counts = Counter(r.nix_says for r in rows)
    total = len(rows)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("builder")
    table.add_column("built", justify="right")
    table.add_column("share", justify="right")
    table.add_column("needing")
    names = [*farm.names(), "local"]
    for name in names:
        mine = [r for r in rows if r.nix_says == name]
        if name == "local" and not mine:
            table.add_row("local", "0", "0%", "-")
            continue
        needs = Counter(r.planned.needs for r in mine)
        table.add_row(
            builder_text(name),
            str(counts.get(name, 0)),
            f"{100 * counts.get(name, 0) / max(total, 1):.0f}%",
            " + ".join(
                f"{n} {k}" for k, n in sorted(needs.items(), key=lambda kn: kn[0] == "any builder")
            )
            or "-",
        )
    unbuilt = counts.get(None, 0)
    if unbuilt:
        table.add_row(Text("not built", style="bold red"), str(unbuilt), "", "")
    return table


def print_status(console: Console, farm: Farm) -> None:
    """What `nixdist status` says after the build: machines, slots, health, last builds."""
    argv = [str(NIXDIST), "status", "--machines", str(farm.machines_file)]
    console.print(Rule("nixdist status"))
    console.print(f"$ {display_path(NIXDIST)} status --machines {farm.machines_file}", style="dim")
    result = subprocess.run(
        argv, env=demo_env(farm), capture_output=True, text=True, check=False, timeout=60
    )
    console.print(Text.from_ansi(result.stdout.rstrip("\n")), soft_wrap=True)
    if result.returncode != 0:
        console.print(result.stderr.strip(), style="bold red", markup=False)


def dashboard_answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/api/status", timeout=2) as reply:
            return bool(reply.status == 200)  # noqa: PLR2004 - HTTP OK
    except (OSError, urllib.error.URLError):
        return False


def start_dashboard(console: Console, farm: Farm) -> None:
    """Leave `nixdist dashboard` running on `DASHBOARD` for the demo farm (or reuse the one
    there)."""
    url = f"http://{DASHBOARD}/"
    if not dashboard_answers(DASHBOARD):
        log = farm.directory / "dashboard.log"
        with log.open("ab") as out:
            subprocess.Popen(
                [
                    str(NIXDIST),
                    "dashboard",
                    "--machines",
                    str(farm.machines_file),
                    "--listen",
                    DASHBOARD,
                ],
                env=demo_env(farm),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # outlives `make demo`
            )
        deadline = time.monotonic() + DASHBOARD_START_S
        while not dashboard_answers(DASHBOARD):
            if time.monotonic() > deadline:
                console.print(
                    f"the dashboard did not start; see {log}", style="bold red", markup=False
                )
                return
            time.sleep(0.2)
    console.print(f"Dashboard: {url}  (nixdist dashboard: running builds, /metrics, /api/status)")


def print_hints(console: Console, farm: Farm, *, keep: bool) -> None:
    nixdist = display_path(NIXDIST)
    directory = shlex.quote(str(farm.directory))
    if keep:
        lines = [
            (
                "The demo farm is still running, so the next `make demo` starts at once"
                " (DEMO_KEEP_FARM=0 stops it at the end). Look further with:"
            ),
            f"  {nixdist} farm status --dir {directory}",
            (
                f"  ssh -F {shlex.quote(str(farm.ssh_config))} {farm.alias('b1')}"
                "    # a shell on b1, with its own /nix/store"
            ),
            f"  {nixdist} farm down --dir {directory}      # stop it (its stores are kept)",
        ]
    else:
        lines = [
            (
                "DEMO_KEEP_FARM=0: the demo farm was stopped (its stores are kept; the next"
                " `make demo` starts it again). Look at it with:"
            ),
            f"  {nixdist} farm status --dir {directory}",
        ]
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


def problems_of(rows: Sequence[Row], planned: Mapping[str, Planned], run: BuildRun) -> list[str]:
    problems = [f"{r.planned.name}: {r.problem}" for r in rows if r.problem]
    if run.returncode != 0:
        problems.insert(0, f"nix-build exited with status {run.returncode}")
    if len(planned) != EXPECTED_DERIVATIONS:
        problems.append(f"expected {EXPECTED_DERIVATIONS} derivations, found {len(planned)}")
    if extra := set(run.remote) - set(planned):
        problems.append(f"Nix built {len(extra)} derivations outside the demo graph")
    return problems


def print_outcome(
    console: Console, rows: Sequence[Row], problems: Sequence[str], run: BuildRun
) -> None:
    remote = sum(1 for r in rows if r.nix_says not in {None, "local"})
    builders_used = len({r.nix_says for r in rows if r.nix_says not in {None, "local"}})
    summary = (
        f"nix-build took {run.seconds:.1f} s (wall time) for {len(rows)} derivations;"
        f" {remote} were built remotely, on {builders_used} builders"
    )
    if problems:
        console.print(f"FAILED: {summary}.", style="bold red", markup=False, soft_wrap=True)
        for problem in problems:
            console.print(f"  - {problem}", style="red", markup=False, soft_wrap=True)
        return
    console.print(
        f"OK: {summary}. Nothing was built locally, and Nix's log and the builders' own"
        " stores agree on every derivation.",
        style="bold green",
        markup=False,
        soft_wrap=True,
    )
    if run.stdout.strip():
        console.print(f"result: {run.stdout.strip()}", markup=False, soft_wrap=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The demo's knobs, from the environment (see the module docstring)."""

    directory: Path
    keep: bool
    work: str
    poll: str
    nix: str | None  # the client's Nix version (a farm client); None: the host's

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        settings = cls(
            directory=Path(environ.get("DEMO_FARM_DIR") or DEFAULT_FARM_DIR),
            keep=environ.get("DEMO_KEEP_FARM", "1") != "0",
            work=environ.get("DEMO_WORK", "0.5"),
            poll=environ.get("DEMO_POLL_INTERVAL", "5"),
            nix=environ.get("DEMO_NIX") or None,
        )
        if settings.nix is not None and settings.nix not in KNOWN_VERSIONS:
            raise ValueError(
                f"DEMO_NIX={settings.nix!r} is not a Nix version the farm knows;"
                f" known: {', '.join(KNOWN_VERSIONS)}"
            )
        if not re.fullmatch(r"\d+(\.\d+)?", settings.work):
            raise ValueError(f"DEMO_WORK={settings.work!r} is not a number of seconds")
        if not re.fullmatch(r"[1-9]\d*", settings.poll):
            raise ValueError(f"DEMO_POLL_INTERVAL={settings.poll!r} is not a whole number >= 1")
        return settings


def whole_graph(console: Console, farm: Farm, settings: Settings, hook_run: BuildRun) -> int:
    """Step 5: the same graph (a fresh salt) with ``nixdist build``, which schedules all of
    it itself instead of answering Nix one derivation at a time. The exit status."""
    salt = f"demo-build-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000}"
    program = str(NIXDIST) if settings.nix is None else "nixdist"  # a farm client's own
    argv = [program, "build", str(DEMO_NIX), "--argstr", "salt", salt]
    argv += ["--argstr", "work", settings.work, "--machines", str(farm.machines_file)]
    argv += ["-j0", "--no-out-link"]
    console.print()
    console.print(Rule("The same graph with nixdist build (the whole graph at once, no hook)"))
    command = client_cmd(farm, settings.nix, argv)
    console.print(f"$ {shown_cmd(farm, settings.nix, argv)}", style="dim", markup=False)
    started = time.monotonic()
    done = subprocess.run(command, env=demo_env(farm), cwd=REPO, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        console.print(f"FAILED: nixdist build exited with status {done.returncode}", style="red")
        return 1
    console.print(
        f"OK: nixdist build took {seconds:.1f} s (wall time, evaluation included);"
        f" nix-build with the hook took {hook_run.seconds:.1f} s for the same graph.",
        style="bold green",
        markup=False,
        soft_wrap=True,
    )
    return 0


def build_and_report(console: Console, farm: Farm, settings: Settings) -> int:
    """Steps 2 and 3: the build, then who built what. The exit status."""
    machines = farm.machines()
    names = {m.uri: m.uri.removeprefix(f"ssh://{ALIAS_PREFIX}") for m in machines}
    salt = f"demo-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000}"
    nix = settings.nix
    planned = plan(farm, nix, instantiate(farm, nix, salt, settings.work))
    argv = build_argv(farm, salt, settings.work, settings.poll, hook=hook_for(farm, nix))
    console.print()
    console.print(
        Rule(f"nix-build {display_path(DEMO_NIX)}: {len(planned)} derivations, salt {salt}")
    )
    console.print(
        f"$ NIX_SSHOPTS={shlex.quote(farm.nix_sshopts)} {shown_cmd(farm, nix, argv)}",
        style="dim",
        markup=False,
        soft_wrap=True,
    )
    run = run_build(console, farm, client_cmd(farm, nix, argv), names)
    console.print()
    console.print(Rule("Who built what"))
    rows = make_rows(planned, run, ultimate_paths(farm), machines, names)
    console.print(rows_table(rows))
    console.print()
    console.print(count_table(rows, farm))
    console.print()
    problems = problems_of(rows, planned, run)
    print_outcome(console, rows, problems, run)
    if problems:
        return 1
    return whole_graph(console, farm, settings, run)


def main() -> int:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = PIPED_WIDTH  # a log file has no edge: do not squeeze the tables
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as err:
        console.print(f"make demo: {err}", style="bold red", markup=False)
        return 2
    if reason := preflight():
        console.print(f"make demo: {reason}", style="bold red", markup=False)
        return 2

    client = "the host's Nix" if settings.nix is None else f"a Nix {settings.nix} client"
    console.print(Rule(f"nixdist demo: one nix-build ({client}), three builders"))
    try:
        farm, reused = ensure_farm(settings.directory)
    except NixdistError as err:
        console.print(f"make demo: cannot bring up the farm: {err}", style="bold red", markup=False)
        return 1
    state = "reused (all builders were already running)" if reused else "started"
    console.print(f"Farm in {farm.directory}: {state}", markup=False)
    if settings.nix is not None:
        try:  # built once (a few minutes) when missing
            rootfs = ensure_rootfs_info(settings.nix)
        except NixdistError as err:
            console.print(
                f"make demo: no Nix {settings.nix} client: {err}", style="bold red", markup=False
            )
            return 1
        console.print(
            f"Client: {rootfs.nix_version} in {rootfs.path}, its store in"
            f" {farm.client_store_dir(settings.nix)}",
            markup=False,
        )
    console.print(farm_table(farm))
    try:
        status = build_and_report(console, farm, settings)
    except NixdistError as err:
        console.print(f"make demo: {err}", style="bold red", markup=False)
        status = 1
    except KeyboardInterrupt:
        console.print("make demo: interrupted", style="bold red")
        status = 130
    finally:
        if not settings.keep:
            farm.down()
    console.print()
    print_hints(console, farm, keep=settings.keep)
    console.print()
    print_status(console, farm)
    start_dashboard(console, farm)
    return status


if __name__ == "__main__":
    sys.exit(main())
