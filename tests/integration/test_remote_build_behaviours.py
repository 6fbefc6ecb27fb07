"""What a Nix 2.34 client sees of remote builds, with nixdist-hook and with Nix's own hook.

Every test runs the same builds twice, once with ``build-hook`` = nixdist-hook and once with
Nix's own (``nix __build-remote``), each into fresh stores, and checks the same facts for
both, so that a difference in nixdist shows up next to what Nix itself does:

1. three builders of three kinds in one build: ``ssh://localhost?remote-store=M1`` (feature
   ``foo``), the bare store path ``M2`` (``bar``) and ``ssh-ng://localhost?remote-store=M3``
   (``baz``), for a client building into the chroot store ``M0`` with ``-j0``: each input
   builds on the builder with its feature, the output that needs all three is valid in ``M0``,
   and ``nix log`` in ``M0`` shows each remote build's log;
2. ``--keep-failed`` on a failing remote build: Nix's note and warning, and the kept build
   directory on the builder holds what the failed build wrote;
3. a ``post-build-hook`` in the client's ``nix.conf`` runs on both sides: once where each
   derivation is built (the builder's Nix reads the same configuration) and once in ``M0``;
4. a builder whose ``nix-daemon`` does not trust the client (``--force-untrusted``, over
   ``ssh-ng://``): an input-addressed DAG builds there (by ``.drv`` path), so does a DAG of
   fixed-output derivations, and an unsigned input built locally is refused with the daemon's
   "lacks a signature by a trusted key" and exit status 1.

**The environment.** The client is Nix 2.34 in the forky root filesystem, entered with
``pivot_root`` (`nixdist.farm.client`, ``sandbox=True``): every store here is a chroot store
(a directory holding ``nix/store``), which Nix builds in only in its sandbox, and the sandbox
needs user namespaces, which a chrooted process may not create. No sshd is involved: Nix and
nixdist run the remote command of an ``ssh://localhost`` or ``ssh-ng://localhost`` store as a
local process, so each "builder" is a ``nix-store --serve`` or ``nix-daemon --stdio`` on its
own chroot store. A sandbox holds only the build's closure, so the builder of every derivation
is a static busybox (Debian's busybox-static, installed by scripts/setup.sh) that evaluation
adds to the store. Paths are short (a directory directly in /tmp): Nix names its slot lock
files after the whole builder URI, and a long one exceeds the 255 bytes a file name may have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixdist.farm import host_system
from nixdist.farm.client import client_argv, client_dir
from nixdist.farm.rootfs import ensure_rootfs
from nixdist.state.db import StateDB
from nixrun import HANG_GUARD_S

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

pytestmark = pytest.mark.integration

VERSION = "2.34"
BUSYBOX = Path("/bin/busybox")
#: Nix's own hook in Nix 2.34 (its default `build-hook`).
OWN_HOOK = "/usr/bin/nix __build-remote"
HOOKS = ("nixdist", "own")
#: The remote program of an ssh-ng store whose nix-daemon does not trust its client.
UNTRUSTING = """\
#!/bin/sh
exec nix-daemon --extra-experimental-features daemon-trust-override --force-untrusted "$@"
"""
#: Appends "<drv> <the store it ran for>" to the file next to it, for each run.
POST_BUILD_HOOK = """\
#!/bin/sh
store=$(printf '%s\\n' "$NIX_CONFIG" | sed -n 's/^store = //p')
echo "$DRV_PATH $store" >> "$(dirname "$0")/post-build-hook.log"
"""

#: Three inputs that each need one feature, and a top that reads all three. Each input's
#: script is a file of its own (an input source), so a store that holds it built that input.
DAG_NIX = """\
{ bbdir }:
let
  busybox = "${bbdir}/busybox";
  input = name: feature: derivation {
    name = "rb-${name}";
    system = builtins.currentSystem;
    builder = busybox;
    args = [ "sh" (builtins.toFile "rb-${name}.sh" ''
      echo "remote log of ${name}"
      echo ${name} > $out
    '') ];
    requiredSystemFeatures = [ feature ];
  };
  foo = input "foo" "foo";
  bar = input "bar" "bar";
  baz = input "baz" "baz";
  top = derivation {
    name = "rb-top";
    system = builtins.currentSystem;
    builder = busybox;
    args = [ "sh" "-c" ''
      echo "remote log of top"
      read a < ${foo}; read b < ${bar}; read c < ${baz}
      echo "$a $b $c" > $out
    '' ];
  };
  failing = derivation {
    name = "rb-failing";
    system = builtins.currentSystem;
    builder = busybox;
    args = [ "sh" "-c" ''
      echo "left by the failed build" > left-behind
      echo "failing on purpose"
      exit 1
    '' ];
    requiredSystemFeatures = [ "foo" ];
  };
in top // { inherit top foo bar baz failing; }
"""

#: Fixed-output derivations only: two leaves and a top that reads both.
FIXED_NIX = """\
{ bbdir }:
let
  fixed = name: text: inputs: derivation {
    name = "rb-fixed-${name}";
    system = builtins.currentSystem;
    builder = "${bbdir}/busybox";
    args = [ "sh" "-c" "echo building ${name} from ${toString inputs}; echo ${text} > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "${text}\\n";
  };
in fixed "top" "AB" [ (fixed "a" "A" [ ]) (fixed "b" "B" [ ]) ]
"""

INPUTS = ("foo", "bar", "baz")
SIGNATURE_REFUSED = re.compile(
    r"cannot add path '(/nix/store/[^']+)' because it lacks a signature by a trusted key"
)
KEEPING = re.compile(r"""note: keeping build directory ["']([^"']+)["']""")
KEPT_REMOTELY = "The failed build directory was kept on the remote builder due to"


def _sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, pivot_root)"
    if not BUSYBOX.is_file():
        return f"needs a static {BUSYBOX} (busybox-static; scripts/setup.sh installs it)"
    dynamic = subprocess.run(["ldd", str(BUSYBOX)], capture_output=True, check=False)
    if dynamic.returncode == 0:
        return f"{BUSYBOX} is linked dynamically; install busybox-static (scripts/setup.sh)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """A sandbox-capable Nix 2.34 client (`nixdist.farm.client`) working in `work`."""

    farm_dir: Path
    work: Path

    def hook(self, name: str) -> str:
        """The `build-hook` value of hook `name` (one of HOOKS)."""
        if name == "own":
            return OWN_HOOK
        return str(client_dir(self.farm_dir, VERSION) / "bin" / "nixdist-hook")

    def run(self, argv: Sequence[str], *, conf: Sequence[str] = ()) -> Done:
        env = {**os.environ, "NIXDIST_STATE_DIR": str(self.work / "nixdist-state")}
        for name in ("NIX_REMOTE_SYSTEMS", "NIX_CONFIG", "NIX_CONF_DIR", "NIX_SSHOPTS"):
            env.pop(name, None)
        result = subprocess.run(
            client_argv(self.farm_dir, VERSION, argv, cwd=self.work, sandbox=True, conf=conf),
            env=env,
            cwd=self.work,
            capture_output=True,
            text=True,
            check=False,
            timeout=HANG_GUARD_S,
        )
        return Done(argv=list(argv), status=result.returncode, out=result.stdout, err=result.stderr)

    def ok(self, argv: Sequence[str]) -> str:
        done = self.run(argv)
        assert done.status == 0, done.why()
        return done.out

    def stores(self, hook: str) -> Stores:
        """Fresh stores for one hook's run."""
        root = self.work / hook
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        return Stores(root=root)

    def build(
        self,
        stores: Stores,
        hook: str,
        builders: str,
        args: Sequence[str],
        *,
        conf: Sequence[str] = (),
    ) -> Done:
        """``nix-build`` into `stores`.client with ``-j0`` and `builders`, through `hook`."""
        argv = [
            "nix-build",
            *args,
            "--arg",
            "bbdir",
            "./bb",
            "--store",
            str(stores.client),
            "--no-out-link",
            "-j0",
            "--builders",
            builders,
            "--option",
            "build-hook",
            self.hook(hook),
        ]
        return self.run(argv, conf=conf)

    def all_paths(self, store: Path) -> list[str]:
        return self.ok(["nix", "path-info", "--store", str(store), "--all"]).split()

    def valid(self, store: Path, path: str) -> bool:
        return self.run(["nix", "path-info", "--store", str(store), path]).status == 0

    def drvs(self, stores: Stores, nix_file: str, attrs: Sequence[str]) -> list[str]:
        selected = [arg for attr in attrs for arg in ("-A", attr)]
        argv = ["nix-instantiate", nix_file, "--arg", "bbdir", "./bb", *selected]
        return self.ok([*argv, "--store", str(stores.client)]).split()


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    argv: list[str]
    status: int
    out: str
    err: str

    def why(self) -> str:
        return f"{' '.join(self.argv)} exited {self.status}:\n{self.err[-4000:]}"

    def output(self) -> str:
        assert self.status == 0, self.why()
        return self.out.split()[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stores:
    """One run's chroot stores: the client's, and the builders'."""

    root: Path

    @property
    def client(self) -> Path:
        return self.root / "m0"

    def builder(self, n: int) -> Path:
        return self.root / f"m{n}"

    @property
    def untrusting(self) -> Path:
        return self.root / "remote"

    def content(self, store: Path, path: str) -> str:
        return (store / path.lstrip("/")).read_text()


def three_kinds(stores: Stores) -> str:
    """The `builders` value of behaviour 1: m1 over ssh:// (foo), the bare path m2 (bar), m3
    over ssh-ng:// (baz); the remote stores are given their feature as their own
    system-features, so that they build what they accept."""
    system = host_system()
    m1, m2, m3 = (stores.builder(n) for n in (1, 2, 3))
    return ";".join(
        [
            f"ssh://localhost?remote-store={m1}?system-features=foo {system} - 1 1 foo - -",
            f"{m2} {system} - 1 1 bar - -",
            f"ssh-ng://localhost?remote-store={m3}?system-features=baz {system} - 1 1 baz - -",
        ]
    )


def untrusting_uri(client: Client, stores: Stores) -> str:
    remote_store = f"{stores.untrusting}?system-features=foo bar baz"
    query = urllib.parse.urlencode(
        {"remote-program": str(client.work / "untrusting"), "remote-store": remote_store},
        quote_via=urllib.parse.quote,
        safe="/",
    )
    return f"ssh-ng://localhost?{query}"


def untrusting(client: Client, stores: Stores) -> str:
    """The untrusting builder's machines line: 3 jobs, so that no input waits for a slot
    (Nix's own hook has a postponed build wait about 5 s before it asks again)."""
    return f"{untrusting_uri(client, stores)} {host_system()} - 3 1 foo,bar,baz - -"


@pytest.fixture(scope="module")
def farm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    ensure_rootfs(VERSION)
    return tmp_path_factory.mktemp("client")


@pytest.fixture
def client(farm_dir: Path) -> Iterator[Client]:
    work = Path(tempfile.mkdtemp(prefix="nd-rb-", dir="/tmp"))  # short: see the docstring
    try:
        (work / "bb").mkdir()
        shutil.copy(BUSYBOX, work / "bb" / "busybox")
        (work / "dag.nix").write_text(DAG_NIX)
        (work / "fixed.nix").write_text(FIXED_NIX)
        (work / "untrusting").write_text(UNTRUSTING)
        (work / "untrusting").chmod(0o755)
        the_client = Client(farm_dir=farm_dir, work=work)
        userns = the_client.run(["unshare", "--user", "true"])
        if userns.status != 0:
            pytest.skip(f"no user namespaces for Nix's sandbox: {userns.err.strip()}")
        yield the_client
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _present(paths: Sequence[str], suffixes: Mapping[str, str]) -> set[str]:
    """Which of `suffixes` (name -> path suffix) some path in `paths` ends with."""
    return {name for name, suffix in suffixes.items() if any(p.endswith(suffix) for p in paths)}


def test_three_builders_of_three_kinds(client: Client) -> None:
    scripts = {name: f"-rb-{name}.sh" for name in INPUTS}
    seen = {}
    for hook in HOOKS:
        stores = client.stores(hook)
        out = client.build(stores, hook, three_kinds(stores), ["dag.nix"]).output()
        assert stores.content(stores.client, out) == "foo bar baz\n"
        assert client.valid(stores.client, out)
        placed = {n: _present(client.all_paths(stores.builder(n)), scripts) for n in (1, 2, 3)}
        drvs = client.drvs(stores, "dag.nix", INPUTS)
        logs = {
            name: client.ok(["nix", "log", "--store", str(stores.client), drv])
            for name, drv in zip(INPUTS, drvs, strict=True)
        }
        seen[hook] = (placed, {name: f"remote log of {name}" in log for name, log in logs.items()})
    assert seen["own"] == ({1: {"foo"}, 2: {"bar"}, 3: {"baz"}}, dict.fromkeys(INPUTS, True))
    assert seen["nixdist"] == seen["own"]
    # And it was nixdist's hook that built them, where the stores say.
    with StateDB.open(client.work / "nixdist-state") as db:
        machines = {row.drv_path.split("-", 1)[1]: row.machine for row in db.builds()}
    stores = Stores(root=client.work / "nixdist")
    assert machines["rb-foo.drv"].startswith(f"ssh://localhost?remote-store={stores.builder(1)}?")
    assert machines["rb-bar.drv"] == str(stores.builder(2))
    assert machines["rb-baz.drv"].startswith(
        f"ssh-ng://localhost?remote-store={stores.builder(3)}?"
    )


def test_keep_failed_keeps_the_build_directory_on_the_builder(client: Client) -> None:
    for hook in HOOKS:
        stores = client.stores(hook)
        args = ["dag.nix", "-A", "failing", "--keep-failed"]
        done = client.build(stores, hook, three_kinds(stores), args)
        assert done.status == 1, done.why()
        assert "failing on purpose" in done.err
        kept = KEEPING.search(done.err)
        assert kept, done.why()
        assert KEPT_REMOTELY in done.err, done.why()
        directory = Path(kept.group(1))
        # ssh://localhost: the builder's build directory is in its store's state directory.
        assert directory.is_relative_to(stores.builder(1)), hook
        assert (directory / "left-behind").read_text() == "left by the failed build\n"


def test_post_build_hook_runs_on_the_builder_and_here(client: Client) -> None:
    """Once per derivation in the client and once where it was built: 8 runs for 4.

    The hook logs the `store` setting Nix hands it. For the ssh:// and ssh-ng:// builders
    that is the builder's store (their Nix is a process of its own, given the store); Nix's
    own hook builds for a bare-path builder in its own process, whose `store` stays the
    client's, so that run is not told apart by it.
    """
    runs = {}
    for hook in HOOKS:
        stores = client.stores(hook)
        script = stores.root / "post-build-hook"
        script.write_text(POST_BUILD_HOOK)
        script.chmod(0o755)
        conf = [f"post-build-hook = {script}"]
        client.build(stores, hook, three_kinds(stores), ["dag.nix"], conf=conf).output()
        ran = []
        for line in (stores.root / "post-build-hook.log").read_text().splitlines():
            drv, store = line.split(" ", 1)
            name = drv.removesuffix(".drv").split("-", 1)[1]
            # "local:///<root>/m1?system-features=foo" -> "m1"
            where = Path(urllib.parse.urlsplit(store).path).relative_to(stores.root)
            ran.append((name, str(where)))
        runs[hook] = ran
    for hook, ran in runs.items():
        assert len(ran) == 8, (hook, ran)
        names = Counter(name for name, _ in ran)
        assert names == dict.fromkeys(["rb-foo", "rb-bar", "rb-baz", "rb-top"], 2), (hook, ran)
        assert {("rb-foo", "m1"), ("rb-baz", "m3")} <= set(ran), (hook, ran)
        assert Counter(where for _, where in ran)["m0"] >= 4, (hook, ran)
    assert len(runs["nixdist"]) == len(runs["own"])


def test_an_untrusting_daemon_builds_an_input_addressed_dag_by_path(client: Client) -> None:
    for hook in HOOKS:
        stores = client.stores(hook)
        uri = untrusting_uri(client, stores)
        info = json.loads(client.ok(["nix", "store", "info", "--json", "--store", uri]))
        assert not info["trusted"], info  # the daemon does not trust us (2.34 says false)
        out = client.build(stores, hook, untrusting(client, stores), ["dag.nix"]).output()
        assert stores.content(stores.client, out) == "foo bar baz\n"
        [top_drv] = client.drvs(stores, "dag.nix", ["top"])
        # Built there by its path: the daemon holds the .drv and the output.
        assert client.valid(stores.untrusting, top_drv), hook
        assert client.valid(stores.untrusting, out), hook
        assert client.valid(stores.client, out), hook


def test_an_untrusting_daemon_builds_fixed_output_derivations(client: Client) -> None:
    for hook in HOOKS:
        stores = client.stores(hook)
        out = client.build(stores, hook, untrusting(client, stores), ["fixed.nix"]).output()
        assert stores.content(stores.client, out) == "AB\n"
        # Not checked: the output's content address (`ca`) in the client's store. Nix's own
        # hook records it; nixdist cannot (README: registered without its `ca`).
        assert client.valid(stores.untrusting, out), hook
        assert client.valid(stores.client, out), hook


def test_an_untrusting_daemon_refuses_an_unsigned_input(client: Client) -> None:
    for hook in HOOKS:
        stores = client.stores(hook)
        local = [
            *("nix-build", "dag.nix", "-A", "foo", "--arg", "bbdir", "./bb", "--no-out-link"),
            *("--store", str(stores.client), "-j1", "--builders", ""),
            *("--option", "system-features", "foo"),
        ]
        foo = client.ok(local).split()[-1]
        done = client.build(stores, hook, untrusting(client, stores), ["dag.nix"])
        assert done.status == 1, done.why()
        refused = SIGNATURE_REFUSED.search(done.err)
        assert refused, done.why()
        assert refused.group(1) == foo
        assert not client.valid(stores.untrusting, foo)
