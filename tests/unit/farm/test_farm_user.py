"""Farm builders reached as an ordinary user, and over ssh-ng: spec keys and rendered files."""

from __future__ import annotations

import json

import pytest

from nixdist.errors import ConfigError
from nixdist.farm import BuilderSpec, make_spec, parse_builder_option, parse_farm_toml
from nixdist.farm.render import (
    ACCOUNT_ID_BLOCK,
    account_id_base,
    render_group,
    render_machine_line,
    render_nix_conf,
    render_passwd,
    render_sshd_config,
    store_uri,
)
from nixdist.farm.spec import Scheme
from nixdist.farm.statefile import BuilderRecord, FarmState, decode_state, encode_state

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEm+cHdFLbwTsp+IHAfF0LZvFHkY+eijRV56NH69Ro0E"
ACCOUNTS = """\
root:x:0:0:root:/root:/bin/bash
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
nixbld1:x:999:995:Nix build user 1:/var/empty:/usr/sbin/nologin
nix:x:1000:1000:someone else:/home/nix:/bin/sh
"""
GROUP = """\
root:x:0:
nixbld:x:995:nixbld1
nix:x:1000:
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b1:user=nix", make_spec("b1", user="nix")),
        ("b1:user=nix;trusted=false", make_spec("b1", user="nix", trusted=False)),
        ("b1:user=nix;trusted=True", make_spec("b1", user="nix")),
        ("b1:scheme=ssh-ng", make_spec("b1", scheme="ssh-ng")),
        ("b1:scheme=ssh;nix=2.34;user=ci", make_spec("b1", nix="2.34", user="ci")),
    ],
)
def test_parse_builder_option(text: str, expected: BuilderSpec) -> None:
    assert parse_builder_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("b1:user=Nix", "not a user name"),
        ("b1:user=root", "not a user name"),
        ("b1:user=nixbld", "not a user name"),
        ("b1:trusted=false", "trusted=false needs user=NAME"),
        ("b1:user=nix;trusted=no", "trusted must be true or false"),
        ("b1:scheme=ssh-ng2", "scheme must be ssh or ssh-ng"),
    ],
)
def test_parse_builder_option_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_builder_option(text)


def test_parse_farm_toml() -> None:
    config = parse_farm_toml(
        """
        [builders.b1]
        user = "nix"
        trusted = false
        scheme = "ssh-ng"
        nix = "2.34"
        """
    )
    assert config.builders == (
        make_spec("b1", user="nix", trusted=False, scheme="ssh-ng", nix="2.34"),
    )
    assert config.builders[0].scheme is Scheme.SSH_NG
    assert config.builders[0].login == "nix"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[builders.b1]\nuser = 1", 'user must be a string \\(like "nix"\\)'),
        ("[builders.b1]\nuser = 'x'\ntrusted = 'no'", "trusted must be true or false"),
        ("[builders.b1]\nscheme = 'ftp'", "scheme must be ssh or ssh-ng"),
    ],
)
def test_parse_farm_toml_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_farm_toml(text, source="farm.toml")


@pytest.mark.parametrize(
    ("spec", "uri"),
    [
        (make_spec("b1"), "ssh://nixdist-b1"),
        (make_spec("b1", user="nix"), "ssh://nix@nixdist-b1"),
        (make_spec("b1", scheme="ssh-ng"), "ssh-ng://nixdist-b1"),
        (make_spec("b1", user="nix", scheme="ssh-ng"), "ssh-ng://nix@nixdist-b1"),
    ],
)
def test_store_uri_in_the_machines_line(spec: BuilderSpec, uri: str) -> None:
    assert store_uri(spec, alias="nixdist-b1") == uri
    line = render_machine_line(spec, alias="nixdist-b1", client_key="/k", host_key=HOST_KEY)
    assert line.split(" ")[0] == uri


def test_nix_conf_of_a_user_builder() -> None:
    trusted = render_nix_conf(make_spec("b1", user="nix"))
    assert "trusted-users = root nix\n" in trusted
    assert "build-users-group = nixbld\n" in trusted
    untrusted = render_nix_conf(make_spec("b1", user="nix", trusted=False))
    assert "trusted-users = root\n" in untrusted
    assert "build-users-group = nixbld\n" in untrusted
    root = render_nix_conf(make_spec("b1"))
    assert "trusted-users = root\n" in root
    assert "build-users-group =\n" in root


def test_sshd_config_allows_the_user() -> None:
    assert "AllowUsers root\n" in render_sshd_config(22)
    conf = render_sshd_config(22, user="nix")
    assert "AllowUsers root nix\n" in conf
    assert "AuthorizedKeysFile /etc/ssh/authorized_keys .ssh/authorized_keys\n" in conf


def test_an_sshd_with_per_source_penalties_has_them_off() -> None:
    """OpenSSH 9.8+ would refuse 127.0.0.1 for a while after a few quick connections (every
    farm client connects from there); older sshd reject the option, so it is not written."""
    for version in (None, (9, 2), (9, 7)):
        assert "PerSourcePenalties" not in render_sshd_config(22, sshd_version=version)
    for version in ((9, 8), (10, 6)):
        assert "PerSourcePenalties no\n" in render_sshd_config(22, sshd_version=version)


def test_accounts_replace_same_names_on_ids_of_the_builder() -> None:
    spec = make_spec("b1", user="nix", jobs=10)
    base = account_id_base("/farm/builders/b1")
    assert base == account_id_base("/farm/builders/b1")
    assert base != account_id_base("/farm/builders/b2")
    passwd = render_passwd(ACCOUNTS, spec, id_base=base).splitlines()
    assert passwd[:2] == ACCOUNTS.splitlines()[:2]  # root and sshd kept
    entries = {line.split(":")[0]: line.split(":") for line in passwd}
    assert ":".join(entries["nix"]) == f"nix:x:{base}:{base}:nixdist farm user:/home/nix:/bin/bash"
    builders = [e for name, e in entries.items() if name.startswith("nixbld")]
    assert len(builders) == 10  # max(8, jobs)
    uids = {int(e[2]) for e in builders}
    assert uids == set(range(base + 1, base + 11))
    assert all(base <= uid < base + ACCOUNT_ID_BLOCK for uid in uids)
    assert {e[3] for e in builders} == {str(base + 1)}
    group = render_group(GROUP, spec, id_base=base).splitlines()
    assert group[0] == "root:x:0:"
    assert f"nix:x:{base}:" in group
    [nixbld] = [line for line in group if line.startswith("nixbld:")]
    assert nixbld == f"nixbld:x:{base + 1}:" + ",".join(f"nixbld{i}" for i in range(1, 11))


def test_state_keeps_user_trust_and_scheme() -> None:
    spec = make_spec("b1", user="nix", trusted=False, scheme="ssh-ng")
    state = FarmState(alias_prefix="p-", records=[BuilderRecord(spec=spec, port=1)])
    assert decode_state(encode_state(state), source="s").records[0].spec == spec
    # A state file from before these keys: the defaults.
    data = json.loads(encode_state(state))
    for key in ("user", "trusted", "scheme"):
        del data["builders"][0][key]
    old = decode_state(json.dumps(data), source="s").records[0].spec
    assert (old.user, old.trusted, old.scheme) == (None, True, Scheme.SSH)
