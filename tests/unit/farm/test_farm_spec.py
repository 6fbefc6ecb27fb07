"""Farm builder specs, the files rendered from them, and the ~/.ssh/config include."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from nixdist.errors import ConfigError
from nixdist.farm import (
    BuilderSpec,
    combine_specs,
    host_system,
    make_spec,
    parse_builder_option,
    parse_farm_toml,
    plain_specs,
)
from nixdist.farm.render import (
    render_machine_line,
    render_machines,
    render_nix_conf,
    render_ssh_config_block,
)
from nixdist.farm.sshinclude import add_ssh_include, has_ssh_include, remove_ssh_include

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEm+cHdFLbwTsp+IHAfF0LZvFHkY+eijRV56NH69Ro0E"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b1", make_spec("b1")),
        ("b1:", make_spec("b1")),
        ("b2:jobs=2;speed=3", make_spec("b2", jobs=2, speed=3)),
        (
            "b3:systems=x86_64-linux,aarch64-linux;features=big-parallel,kvm;mandatory=benchmark",
            make_spec(
                "b3",
                systems=["x86_64-linux", "aarch64-linux"],
                features=["big-parallel", "kvm"],
                mandatory=["benchmark"],
            ),
        ),
        (" b4 : jobs = 2 ; ", make_spec("b4", jobs=2)),
    ],
)
def test_parse_builder_option(text: str, expected: BuilderSpec) -> None:
    assert parse_builder_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a builder name"),
        ("-x", "is not a builder name"),
        ("a b", "is not a builder name"),
        ("b1:jobs", "is not KEY=VALUE"),
        ("b1:color=red", "unknown key 'color'"),
        ("b1:jobs=1;jobs=2", "given twice"),
        ("b1:jobs=x", "jobs must be an integer"),
        ("b1:jobs=0", "jobs must be an integer >= 1"),
        ("b1:speed=1.5", "speed must be an integer"),
        ("b1:systems=", "at least one system"),
        ("b1:systems=linux", "not a system type"),
        ("b1:systems=x86_64-linux,x86_64-linux", "listed twice"),
        ("b1:features=a b", "not a valid feature name"),
    ],
)
def test_parse_builder_option_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_builder_option(text)


def test_spec_defaults_and_derived_values() -> None:
    spec = make_spec("b", systems=["x86_64-linux", "i686-linux"], features=["a"], mandatory=["m"])
    assert spec.system == "x86_64-linux"
    assert spec.extra_platforms == ("i686-linux",)
    assert spec.system_features == {"a", "m"}
    assert make_spec("c").systems == (host_system(),)
    assert [s.name for s in plain_specs(3)] == ["b1", "b2", "b3"]


def test_parse_farm_toml() -> None:
    config = parse_farm_toml(
        """
        alias_prefix = "demo-"
        [builders.b1]
        jobs = 2
        [builders.big]
        systems = ["x86_64-linux", "aarch64-linux"]
        features = ["big-parallel"]
        mandatory = "benchmark"
        speed = 4
        """
    )
    assert config.alias_prefix == "demo-"
    assert config.builders == (
        make_spec("b1", jobs=2),
        make_spec(
            "big",
            systems=["x86_64-linux", "aarch64-linux"],
            features=["big-parallel"],
            mandatory=["benchmark"],
            speed=4,
        ),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[builders", "farm.toml"),
        ("colour = 1", "unknown top-level keys"),
        ("alias_prefix = 'a b'", "not an alias prefix"),
        ("[builders.b1]\ncores = 2", "unknown keys cores"),
        ("[builders.b1]\njobs = '2'", "jobs must be an integer"),
        ("[builders.b1]\nsystems = [1]", "systems must be a list of strings"),
        ("builders = 3", "must be a table"),
    ],
)
def test_parse_farm_toml_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_farm_toml(text, source="farm.toml")


def test_combine_specs() -> None:
    assert combine_specs() is None
    assert combine_specs(count=0) == ()
    combined = combine_specs(
        config=[make_spec("x", jobs=5)],
        count=3,
        overrides=[make_spec("b2", jobs=2), make_spec("z")],
    )
    assert combined is not None
    assert [(s.name, s.max_jobs) for s in combined] == [
        ("x", 5),
        ("b1", 1),
        ("b2", 2),
        ("b3", 1),
        ("z", 1),
    ]
    with pytest.raises(ConfigError, match="defined twice"):
        combine_specs(config=[make_spec("x"), make_spec("x")])


def test_render_machine_line() -> None:
    spec = make_spec(
        "b2",
        systems=["x86_64-linux", "aarch64-linux"],
        features=["kvm", "big-parallel"],
        mandatory=["benchmark"],
        jobs=2,
        speed=3,
    )
    line = render_machine_line(spec, alias="nixdist-b2", client_key="/f/key", host_key=HOST_KEY)
    fields = line.split(" ")
    assert fields[:7] == [
        "ssh://nixdist-b2",
        "x86_64-linux,aarch64-linux",
        "/f/key",
        "2",
        "3",
        "big-parallel,kvm",
        "benchmark",
    ]
    assert base64.b64decode(fields[7]).decode() == HOST_KEY
    plain = render_machine_line(make_spec("b1"), alias="a", client_key="/k", host_key=HOST_KEY)
    assert plain.split(" ")[5:7] == ["-", "-"]


def test_rendered_files_have_no_semicolon_comments() -> None:
    """Nix splits machines text on ';' before it cuts comments (nix-protocols.md §2.2)."""
    assert ";" not in render_machines([])
    assert "#" not in render_machines(["x"]).splitlines()[1]


def test_render_nix_conf() -> None:
    spec = make_spec(
        "b3", systems=["x86_64-linux", "aarch64-linux"], features=["kvm"], mandatory=["bench"]
    )
    conf = render_nix_conf(spec)
    assert "system = x86_64-linux\n" in conf
    assert "extra-platforms = aarch64-linux\n" in conf
    assert "system-features = bench kvm\n" in conf
    assert "build-users-group =\n" in conf
    assert "sandbox = false\n" in conf
    assert "extra-platforms =\n" in render_nix_conf(make_spec("b1"))


def test_render_ssh_config_block() -> None:
    block = render_ssh_config_block(
        alias="nixdist-b1", port=40123, client_key="/f/key", known_hosts="/f/known_hosts"
    )
    lines = [line.strip() for line in block.splitlines()]
    assert lines[0] == "Host nixdist-b1"
    for expected in (
        "HostName 127.0.0.1",
        "Port 40123",
        "User root",
        "HostKeyAlias nixdist-b1",
        "IdentityFile /f/key",
        "IdentitiesOnly yes",
        "UserKnownHostsFile /f/known_hosts",
        "StrictHostKeyChecking yes",
    ):
        assert expected in lines


def test_ssh_include_is_idempotent_and_removable(tmp_path: Path) -> None:
    config = tmp_path / ".ssh" / "config"
    include = Path("/var/lib/nixdist/farm/ssh_config")
    assert not remove_ssh_include(include, config)
    assert add_ssh_include(include, config)
    assert not add_ssh_include(include, config)
    assert config.read_text().splitlines()[1] == f"Include {include}"
    assert config.stat().st_mode & 0o777 == 0o600
    assert has_ssh_include(include, config)
    assert remove_ssh_include(include, config)
    assert not config.exists()


def test_ssh_include_keeps_the_users_lines(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host *\n  ServerAliveInterval 10\n")
    config.chmod(0o644)
    one, two = Path("/farm/one/ssh_config"), Path("/farm/two/ssh_config")
    add_ssh_include(one, config)
    add_ssh_include(two, config)
    lines = config.read_text().splitlines()
    assert lines[1] == f"Include {two}"
    assert lines[3] == f"Include {one}"
    assert lines[4:] == ["Host *", "  ServerAliveInterval 10"]
    # moving one to the top again does not duplicate it
    add_ssh_include(one, config)
    assert config.read_text().count(f"Include {one}") == 1
    remove_ssh_include(one, config)
    remove_ssh_include(two, config)
    assert config.read_text() == "Host *\n  ServerAliveInterval 10\n"
    assert config.stat().st_mode & 0o777 == 0o644
