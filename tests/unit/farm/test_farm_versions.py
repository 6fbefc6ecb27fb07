"""Builders and clients with a Nix version of their own: parsing, state, the rendered pieces."""

from __future__ import annotations

import fcntl
import re
import subprocess
from pathlib import Path

import pytest

from nixdist.errors import ConfigError, FarmError
from nixdist.farm import make_spec, parse_builder_option, parse_farm_toml, rootfs
from nixdist.farm.launch import CHROOT_SCRIPT, PIVOT_SCRIPT, chroot_argv, order_mounts
from nixdist.farm.releases import KNOWN_VERSIONS, release
from nixdist.farm.render import render_client_nix_conf, render_hook_wrapper
from nixdist.farm.statefile import BuilderRecord, FarmState, decode_state, encode_state


def test_known_versions_and_their_suites() -> None:
    assert KNOWN_VERSIONS == ("2.8", "2.26", "2.34")
    assert [release(v).suite for v in KNOWN_VERSIONS] == ["bookworm", "trixie", "forky"]
    assert release("2.34").script == "/usr/share/debootstrap/scripts/sid"
    assert release("2.8").script is None


@pytest.mark.parametrize(
    ("text", "nix"),
    [("b1", None), ("b1:nix=2.8", "2.8"), ("b2:jobs=2; nix = 2.34 ", "2.34")],
)
def test_parse_builder_option_nix(text: str, nix: str | None) -> None:
    assert parse_builder_option(text).nix == nix


@pytest.mark.parametrize("value", ["2.35", "2.34.8", "", "latest"])
def test_unknown_nix_version_names_the_option(value: str) -> None:
    with pytest.raises(ConfigError, match=r"nix=.* is not a Nix version .*known: 2\.8, 2\.26") as e:
        parse_builder_option(f"b1:nix={value}")
    assert "--builder" in str(e.value)
    assert "field nix" in str(e.value)


def test_farm_toml_nix() -> None:
    config = parse_farm_toml('[builders.old]\nnix = "2.8"\n[builders.host]\njobs = 1\n')
    assert [(s.name, s.nix) for s in config.builders] == [("old", "2.8"), ("host", None)]
    with pytest.raises(ConfigError, match=r"nix must be a string .*2\.34"):
        parse_farm_toml("[builders.b1]\nnix = 2.34\n", source="farm.toml")
    with pytest.raises(ConfigError, match=r"farm\.toml: field nix: nix='3\.0'"):
        parse_farm_toml('[builders.b1]\nnix = "3.0"\n', source="farm.toml")


def test_state_file_keeps_the_version() -> None:
    state = FarmState(
        alias_prefix="nixdist-",
        records=[
            BuilderRecord(spec=make_spec("b1", nix="2.26"), port=4000, pid=7, mount_ns=9),
            BuilderRecord(spec=make_spec("b2"), port=4001),
        ],
    )
    text = encode_state(state)
    assert '"nix": "2.26"' in text
    assert '"nix": null' in text
    assert decode_state(text, source="s") == state


def test_state_file_from_before_versions() -> None:
    text = """{"version": 1, "alias_prefix": "p-", "builders": [{"name": "b1",
      "systems": ["x86_64-linux"], "features": [], "mandatory": [], "jobs": 1, "speed": 1,
      "port": 4000, "pid": null, "mount_ns": null}]}"""
    assert decode_state(text, source="s").records[0].spec.nix is None


def test_state_file_with_an_unknown_version_is_an_error() -> None:
    text = encode_state(
        FarmState(alias_prefix="p-", records=[BuilderRecord(spec=make_spec("b1"), port=1)])
    ).replace('"nix": null', '"nix": "9.9"')
    with pytest.raises(ConfigError, match=r"9\.9"):
        decode_state(text, source="s")


def test_order_mounts_parents_first_and_same_path_binds_once() -> None:
    mounts = [
        ("/farm/b/etc-nix", "/etc/nix"),
        ("/tmp/pytest/farm", "/tmp/pytest/farm"),
        ("/farm/b/nix", "/nix"),
        ("/tmp", "/tmp"),
        ("/farm/b/tmp", "/var/tmp"),
        ("/var/tmp/x", "/var/tmp/x"),
    ]
    assert order_mounts(mounts) == [
        ("/farm/b/nix", "/nix"),
        ("/tmp", "/tmp"),
        ("/farm/b/etc-nix", "/etc/nix"),
        ("/farm/b/tmp", "/var/tmp"),
        # not inside a same-path bind: kept (a mount point inside the builder's directory)
        ("/var/tmp/x", "/var/tmp/x"),
    ]


def test_chroot_argv() -> None:
    argv = chroot_argv(
        stage=Path("/f/b/stage"),
        rootfs=Path("/r/forky"),
        mounts=[("/f/b/etc-nix", "/etc/nix"), ("rbind:/dev", "/dev")],
        command=["/usr/sbin/sshd", "-D"],
        pidfile=Path("/f/b/sshd.pid"),
    )
    unshare = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
    assert argv[:8] == [*unshare, CHROOT_SCRIPT]
    assert argv[9:] == [
        "/f/b/sshd.pid",
        "/f/b/stage",
        "/r/forky",
        "rbind:/dev",
        "/dev",
        "/f/b/etc-nix",
        "/etc/nix",
        "--",
        "/usr/sbin/sshd",
        "-D",
    ]
    with pytest.raises(FarmError, match="cannot contain"):
        chroot_argv(stage=Path("/s"), rootfs=Path("/r,x"), mounts=[], command=["true"])


def test_chroot_script_is_valid_sh() -> None:
    assert subprocess.run(["/bin/sh", "-n", "-c", CHROOT_SCRIPT], check=False).returncode == 0


def test_pivot_argv_differs_from_chroot_argv_only_in_the_script() -> None:
    """A sandbox-capable client (pivot_root): the same arguments, the same mounts."""

    def argv(*, pivot: bool) -> list[str]:
        return chroot_argv(
            stage=Path("/f/b/stage"),
            rootfs=Path("/r/forky"),
            mounts=[("/f/b/etc-nix", "/etc/nix"), ("rbind:/dev", "/dev")],
            command=["nix-build", "x.nix"],
            pivot=pivot,
        )

    chroot, pivot = argv(pivot=False), argv(pivot=True)
    assert pivot[7:9] == [PIVOT_SCRIPT, "nixdist-farm-pivot"]
    assert chroot[7:9] == [CHROOT_SCRIPT, "nixdist-farm-chroot"]
    assert pivot[:7] == chroot[:7]
    assert pivot[9:] == chroot[9:]


def test_pivot_script_mounts_as_the_chroot_script_then_pivots() -> None:
    assert subprocess.run(["/bin/sh", "-n", "-c", PIVOT_SCRIPT], check=False).returncode == 0
    shared = CHROOT_SCRIPT.removesuffix('exec chroot "$stage/root" "$@"\n')
    assert PIVOT_SCRIPT.startswith(shared)
    tail = PIVOT_SCRIPT.removeprefix(shared)
    assert "pivot_root . .nixdist-old-root\n" in tail
    assert "umount -l /.nixdist-old-root" in tail


@pytest.mark.parametrize("daemon", [False, True])
def test_render_client_nix_conf(*, daemon: bool) -> None:
    conf = render_client_nix_conf(daemon=daemon)
    assert "sandbox = false\n" in conf
    assert "substituters =\n" in conf
    assert "experimental-features = nix-command\n" in conf
    group = "build-users-group = nixbld\n" if daemon else "build-users-group =\n"
    assert group in conf


def test_hook_wrapper_runs_the_hook_with_the_checkout(tmp_path: Path) -> None:
    """The wrapper really starts nixdist.hook.main (here with this Python and a fake package)."""
    pkg = tmp_path / "src with space" / "nixdist" / "hook"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("import sys\ndef main():\n    print(sys.argv)\n    return 3\n")
    wrapper = tmp_path / "nixdist-hook"
    wrapper.write_text(render_hook_wrapper(python="python3", src_dir=str(pkg.parent.parent)))
    wrapper.chmod(0o755)
    result = subprocess.run([str(wrapper), "a b", "7"], capture_output=True, text=True, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "['nixdist-hook', 'a b', '7']"


def test_a_cached_rootfs_is_returned_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIXDIST_ROOTFS_DIR", str(tmp_path))
    assert rootfs.rootfs_info("2.26") is None
    (tmp_path / "trixie").mkdir()
    (tmp_path / "trixie" / rootfs.INFO_FILE).write_text(
        '{"version": "2.26", "suite": "trixie", "nix_version": "nix (Nix) 2.26.3"}'
    )
    assert rootfs.ensure_rootfs("2.26") == tmp_path / "trixie"
    info = rootfs.rootfs_info("2.26")
    assert info is not None
    assert info.nix_version == "nix (Nix) 2.26.3"
    assert not (tmp_path / ".trixie.lock").exists()  # no lock taken for a finished one


def test_waiting_for_the_lock_is_bounded_and_names_it(tmp_path: Path) -> None:
    lock = tmp_path / ".forky.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with (
            pytest.raises(FarmError, match=rf"waited 0 s for the lock {re.escape(str(lock))}"),
            rootfs._flock(lock, timeout=0.1),
        ):
            pass
    with rootfs._flock(lock, timeout=0.1):
        pass
