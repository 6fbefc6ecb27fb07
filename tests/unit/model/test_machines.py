"""Machines files: field tables, error tables, the seeds, includes, and fuzzing.

Nix 2.8 facts checked here come from ``src/libstore/machines.cc`` (nix-protocols.md §2.2-2.4)
and a few experiments with the real 2.8 (``+5`` and ``007`` are accepted as max jobs,
``4294967296`` and ``0x10`` are not).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import re
import string
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from nixdist.errors import ConfigError
from nixdist.model.includes import MAX_INCLUDE_DEPTH
from nixdist.model.machines import (
    FIELD_NAMES,
    MAX_INCLUDES,
    MAX_UINT,
    Machine,
    decode_host_key,
    machine_to_json,
    machines_from_env_and_setting,
    normalise_uri,
    parse_machines,
    render_machine,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SYSTEM = "x86_64-linux"
HOST_KEY = base64.b64encode(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey root@b\n").decode()


def reader(
    files: Mapping[str, str], *, broken: frozenset[str] = frozenset()
) -> Callable[[str], str | None]:
    """An in-memory `read_file`: missing names give None, `broken` ones raise ConfigError."""

    def read(path: str) -> str | None:
        if path in broken:
            raise ConfigError("Permission denied", file=path)
        return files.get(path)

    return read


def parse(text: str, files: Mapping[str, str] | None = None, **kw: object) -> tuple[Machine, ...]:
    return parse_machines(text, read_file=reader(files or {}), default_system=SYSTEM, **kw)  # type: ignore[arg-type]


def one(text: str) -> Machine:
    machines = parse(text)
    assert len(machines) == 1
    return machines[0]


# ---------------------------------------------------------------------------------------
# Good lines


def test_defaults() -> None:
    assert one("builder") == Machine(
        uri="ssh://builder",
        systems=(SYSTEM,),
        ssh_key=None,
        max_jobs=1,
        speed_factor=1.0,
        supported_features=frozenset(),
        mandatory_features=frozenset(),
        public_host_key=None,
        source="<builders>:1",
    )


def test_all_eight_fields() -> None:
    m = one(f"ssh://nix@b1 x86_64-linux,aarch64-linux /k 4 3 kvm,big-parallel perf {HOST_KEY}")
    assert m.uri == "ssh://nix@b1"
    assert m.systems == ("x86_64-linux", "aarch64-linux")
    assert m.ssh_key == "/k"
    assert m.max_jobs == 4
    assert m.speed_factor == 3.0
    assert m.supported_features == {"kvm", "big-parallel"}
    assert m.mandatory_features == {"perf"}
    assert m.public_host_key == HOST_KEY
    assert m.system_features == {"kvm", "big-parallel", "perf"}


@pytest.mark.parametrize(
    ("line", "attribute", "expected"),
    [
        # field 1: URI normalisation (§2.4)
        ("nix@host", "uri", "ssh://nix@host"),
        ("host:22", "uri", "ssh://host:22"),
        ("ssh://host", "uri", "ssh://host"),
        ("ssh-ng://host", "uri", "ssh-ng://host"),
        ("ssh://h?remote-store=/x&compress=true", "uri", "ssh://h?remote-store=/x&compress=true"),
        ("/some/store", "uri", "/some/store"),
        ("dir/store", "uri", "dir/store"),
        ("auto", "uri", "auto"),
        ("daemon", "uri", "daemon"),
        ("local", "uri", "local"),
        ("local?root=/r", "uri", "local?root=/r"),
        ("daemon?x=1", "uri", "daemon?x=1"),
        ("?root=/r", "uri", "?root=/r"),
        ("automatic", "uri", "ssh://automatic"),
        ("localhost", "uri", "ssh://localhost"),
        ("Local", "uri", "ssh://Local"),
        # field 2: systems
        ("h -", "systems", (SYSTEM,)),
        ("h i686-linux", "systems", ("i686-linux",)),
        ("h a,b,,c,", "systems", ("a", "b", "c")),
        ("h b,a,b", "systems", ("b", "a")),
        ("h ,", "systems", ()),
        ("h -,x", "systems", ("-", "x")),
        # field 3: key
        ("h - -", "ssh_key", None),
        ("h - /root/.ssh/id", "ssh_key", "/root/.ssh/id"),
        ("h - relative-key", "ssh_key", "relative-key"),
        # field 4: max jobs
        ("h - - -", "max_jobs", 1),
        ("h - - 0", "max_jobs", 0),
        ("h - - 8", "max_jobs", 8),
        ("h - - +5", "max_jobs", 5),
        ("h - - 007", "max_jobs", 7),
        (f"h - - {MAX_UINT}", "max_jobs", MAX_UINT),
        # field 5: speed factor
        ("h - - - -", "speed_factor", 1.0),
        ("h - - - 0", "speed_factor", 1.0),
        ("h - - - 0.0", "speed_factor", 1.0),
        ("h - - - 2", "speed_factor", 2.0),
        ("h - - - +2", "speed_factor", 2.0),
        ("h - - - 2.5", "speed_factor", 2.5),
        ("h - - - .5", "speed_factor", 0.5),
        ("h - - - 5.", "speed_factor", 5.0),
        ("h - - - 1e3", "speed_factor", 1000.0),
        ("h - - - 1E-2", "speed_factor", 0.01),
        ("h - - - 1e-400", "speed_factor", 1.0),  # underflows to 0, and 0 means 1
        ("h - - - 99999999999", "speed_factor", 99999999999.0),
        # fields 6 and 7: feature sets
        ("h - - - - kvm,kvm,nixos-test", "supported_features", {"kvm", "nixos-test"}),
        ("h - - - - ,", "supported_features", set()),
        ("h - - - - - perf", "mandatory_features", {"perf"}),
        ("h - - - - - a,,b", "mandatory_features", {"a", "b"}),
        # field 8: host key, checked like Nix's base64Decode
        ("h - - - - - - -", "public_host_key", None),
        (f"h - - - - - - {HOST_KEY}", "public_host_key", HOST_KEY),
        ("h - - - - - - QUJD", "public_host_key", "QUJD"),
        ("h - - - - - - QUJDRA", "public_host_key", "QUJDRA"),  # no padding: fine for Nix
        ("h - - - - - - QQ==junk!", "public_host_key", "QQ==junk!"),  # Nix stops at '='
        ("h - - - - - - =", "public_host_key", "="),
        # fields past the eighth are ignored
        ("h - - 2 - - - - ignored and more", "max_jobs", 2),
    ],
)
def test_field(line: str, attribute: str, expected: object) -> None:
    assert getattr(one(line), attribute) == expected


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("host", "ssh"),
        ("ssh://h", "ssh"),
        ("ssh-ng://h", "ssh-ng"),
        ("SSH://h", "SSH"),
        ("s3://bucket", "s3"),
        ("/nix/store2", ""),
        ("auto", ""),
        ("local?root=/x", ""),
    ],
)
def test_scheme(uri: str, scheme: str) -> None:
    assert one(uri).scheme == scheme


def test_normalise_uri_is_idempotent() -> None:
    for uri in ("h", "u@h", "ssh://h", "/p", "auto", "?x=1"):
        assert normalise_uri(normalise_uri(uri)) == normalise_uri(uri)


# ---------------------------------------------------------------------------------------
# Splitting, trimming, comments, line numbers


def test_separators_comments_and_line_numbers() -> None:
    text = (
        "# a comment line\n"
        "a ; b x86_64-linux\n"
        "\n"
        "   \t c   # a comment ends at the semicolon ; d - - 4\n"
        ";;; e\r\n"
        "f#no-space-comment\n"
        "  # indented comment\n"
        "g - - 2 # x\n"
    )
    machines = parse(text, source="/etc/nix/machines")
    assert [(m.uri, m.source) for m in machines] == [
        ("ssh://a", "/etc/nix/machines:2"),
        ("ssh://b", "/etc/nix/machines:2"),
        ("ssh://c", "/etc/nix/machines:4"),
        ("ssh://d", "/etc/nix/machines:4"),
        ("ssh://e", "/etc/nix/machines:5"),
        ("ssh://f", "/etc/nix/machines:6"),
        ("ssh://g", "/etc/nix/machines:8"),
    ]
    assert machines[-1].max_jobs == 2
    assert machines[3].max_jobs == 4


def test_hash_inside_a_field_cuts_the_rest() -> None:
    m = one("h x86_64-linux /key#1 4")
    assert m.ssh_key == "/key"
    assert m.max_jobs == 1


def test_semicolon_inside_a_uri_splits_it() -> None:
    machines = parse("ssh://h?a=1;b=2")
    assert [m.uri for m in machines] == ["ssh://h?a=1", "ssh://b=2"]


def test_tabs_and_carriage_returns_separate_fields() -> None:
    m = one("h\tx86_64-linux\t-\t3\r")
    assert m.max_jobs == 3


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\xa0", "\u2003", "\x85"])
def test_other_whitespace_is_part_of_a_field(char: str) -> None:
    # Nix splits fields on space, tab, CR and LF only.
    m = one(f"h{char}x - 2")
    assert m.uri == f"ssh://h{char}x"
    assert m.max_jobs == 1


def test_empty_texts() -> None:
    assert parse("") == ()
    assert parse(" \n ; ;\n# only comments\n\t") == ()


# ---------------------------------------------------------------------------------------
# Bad lines


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("-", 1, "'-'"),
        ("- x86_64-linux", 1, "'-'"),
        ("h - - x", 4, "'x'"),
        ("h - - -1", 4, "'-1'"),
        ("h - - 1.5", 4, "'1.5'"),
        ("h - - 0x10", 4, "'0x10'"),
        ("h - - 4294967296", 4, "'4294967296'"),
        ("h - - 99999999999999999999999", 4, "'99999999999999999999999'"),
        ("h - - 1_000", 4, "'1_000'"),
        ("h - - \u0663", 4, "'\u0663'"),  # an Arabic-Indic digit: not ASCII
        ("h - - +", 4, "'+'"),
        ("h - - - x", 5, "'x'"),
        ("h - - - -2", 5, "'-2'"),
        ("h - - - -0", 5, "'-0'"),
        ("h - - - nan", 5, "'nan'"),
        ("h - - - NaN", 5, "'NaN'"),
        ("h - - - inf", 5, "'inf'"),
        ("h - - - -Infinity", 5, "'-Infinity'"),
        ("h - - - 1e999", 5, "'1e999'"),
        ("h - - - 1_0", 5, "'1_0'"),
        ("h - - - 0x1p3", 5, "'0x1p3'"),
        ("h - - - .", 5, "'.'"),
        ("h - - - - - - QUJD!", 8, "'QUJD!'"),
        ("h - - - - - - QU-D", 8, "'QU-D'"),
        ("h - - - - - - QU_D", 8, "'QU_D'"),  # the URL-safe alphabet is not accepted
        ("h - - - - - - ä", 8, "'ä'"),
    ],
)
def test_bad_field(line: str, field: int, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"ok\n# comment\nok2 ; {line}", source="/etc/nix/machines")
    err = info.value
    assert err.file == "/etc/nix/machines"
    assert err.line == 3
    assert err.field == f"{field} ({FIELD_NAMES[field - 1]})"
    message = str(err)
    assert message.startswith(f"/etc/nix/machines:3: field {field} ({FIELD_NAMES[field - 1]}): ")
    assert value in message
    assert "\n" not in message


def test_error_messages_read_well() -> None:
    cases = {
        "h - - x": "<builders>:1: field 4 (max jobs): 'x' is not a non-negative integer",
        "h - - -3": "<builders>:1: field 4 (max jobs): '-3' is negative",
        "h - - 5000000000": "<builders>:1: field 4 (max jobs): '5000000000' is larger than "
        "4294967295",
        "h - - - -1.5": "<builders>:1: field 5 (speed factor): '-1.5' is negative",
        "h - - - nan": "<builders>:1: field 5 (speed factor): 'nan' is not a finite number",
        "h - - - 1e400": "<builders>:1: field 5 (speed factor): '1e400' is too large",
        "h - - - - - - a$b": "<builders>:1: field 8 (public host key): 'a$b' is not base64: "
        "character '$' at position 2",
        "-": "<builders>:1: field 1 (store URI): the store URI is required, not '-'",
    }
    for line, message in cases.items():
        with pytest.raises(ConfigError) as info:
            parse(line)
        assert str(info.value) == message


def test_long_values_are_shortened_and_control_characters_escaped() -> None:
    with pytest.raises(ConfigError) as info:
        parse("h - - " + "x" * 10_000)
    assert len(str(info.value)) < 200
    with pytest.raises(ConfigError) as info:
        parse("h - - a\x1bb\x85c")
    assert "\x1b" not in str(info.value)
    assert "\\x1b" in str(info.value)


def test_a_bad_line_stops_the_parse_even_after_good_ones() -> None:
    with pytest.raises(ConfigError):
        parse("a\nb\nc - - x\nd")


# ---------------------------------------------------------------------------------------
# The seeds


REMOTE_SYSTEMS_CONF = """\
nix@mcflurry.labs.cs.uu.nl x86_64-darwin /home/nix/.ssh/id_quarterpounder_auto 2
nix@scratchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 1 kvm
nix@itchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2
nix@poochie.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2 kvm perf
"""


def test_seed_remote_systems_conf() -> None:
    """The old 7-field remote-systems.conf of the Nix manual (seed 000) reads as described."""
    mcflurry, scratchy, itchy, poochie = parse(
        REMOTE_SYSTEMS_CONF, source="/etc/nix/remote-systems.conf"
    )
    assert mcflurry == Machine(
        uri="ssh://nix@mcflurry.labs.cs.uu.nl",
        systems=("x86_64-darwin",),
        ssh_key="/home/nix/.ssh/id_quarterpounder_auto",
        max_jobs=2,
        source="/etc/nix/remote-systems.conf:1",
    )
    # "requiredSystemFeatures = [ "kvm" ] will cause the build to be performed on ... scratchy"
    assert scratchy == Machine(
        uri="ssh://nix@scratchy.labs.cs.uu.nl",
        systems=("i686-linux",),
        ssh_key="/home/nix/.ssh/id_scratchy_auto",
        max_jobs=8,
        speed_factor=1.0,
        supported_features=frozenset({"kvm"}),
        source="/etc/nix/remote-systems.conf:2",
    )
    # "the machine itchy in the example will execute up to 8 builds in parallel"
    assert itchy == Machine(
        uri="ssh://nix@itchy.labs.cs.uu.nl",
        systems=("i686-linux",),
        ssh_key="/home/nix/.ssh/id_scratchy_auto",
        max_jobs=8,
        speed_factor=2.0,
        source="/etc/nix/remote-systems.conf:3",
    )
    # "poochie will only do derivations that have requiredSystemFeatures set to
    # ["kvm" "perf"] or ["perf"]": kvm supported, perf mandatory.
    assert poochie == Machine(
        uri="ssh://nix@poochie.labs.cs.uu.nl",
        systems=("i686-linux",),
        ssh_key="/home/nix/.ssh/id_scratchy_auto",
        max_jobs=8,
        speed_factor=2.0,
        supported_features=frozenset({"kvm"}),
        mandatory_features=frozenset({"perf"}),
        source="/etc/nix/remote-systems.conf:4",
    )


def test_seed_remote_systems_conf_from_nix_remote_systems() -> None:
    text = machines_from_env_and_setting("@/etc/nix/machines", "/etc/nix/remote-systems.conf")
    machines = parse(text, {"/etc/nix/remote-systems.conf": REMOTE_SYSTEMS_CONF})
    assert [m.uri.split("@")[1].split(".")[0] for m in machines] == [
        "mcflurry",
        "scratchy",
        "itchy",
        "poochie",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "builder x86_64-linux - 1 2 - - -",  # empty lists written as '-'
        "builder x86_64-linux - 1 2  ",  # empty lists written as nothing at all
        "ssh://builder x86_64-linux - 1 2",
    ],
)
def test_seed_nixos_wiki_build_machine(line: str) -> None:
    """The NixOS wiki's `nix.buildMachines` entry (seed 002) as a machines line.

    hostName = "builder"; system = "x86_64-linux"; maxJobs = 1; speedFactor = 2;
    supportedFeatures = [ ]; mandatoryFeatures = [ ]; and no key (the wiki puts the
    IdentityFile in ~/.ssh/config under `Host builder`).
    """
    m = one(line)
    assert machine_to_json(m) == {
        "uri": "ssh://builder",
        "systems": ["x86_64-linux"],
        "ssh_key": None,
        "max_jobs": 1,
        "speed_factor": 2.0,
        "supported_features": [],
        "mandatory_features": [],
        "public_host_key": None,
    }


def test_seed_nix_manual_example() -> None:
    """nix-protocols.md §2.3 quotes the 2.8 manual's example line."""
    m = one("nix@itchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2")
    assert (m.uri, m.max_jobs, m.speed_factor) == ("ssh://nix@itchy.labs.cs.uu.nl", 8, 2.0)


# ---------------------------------------------------------------------------------------
# Includes


def test_nested_includes_and_their_line_numbers() -> None:
    files = {
        "/etc/nix/machines": "a\n@/etc/nix/more\nb",
        "/etc/nix/more": "# header\n\nc ; @ /etc/nix/deeper # comment\n",
        "/etc/nix/deeper": "\n\n\nd - - 3",
    }
    machines = parse("@/etc/nix/machines; z", files)
    assert [(m.uri, m.source) for m in machines] == [
        ("ssh://a", "/etc/nix/machines:1"),
        ("ssh://c", "/etc/nix/more:3"),
        ("ssh://d", "/etc/nix/deeper:4"),
        ("ssh://b", "/etc/nix/machines:3"),
        ("ssh://z", "<builders>:1"),
    ]


def test_missing_include_is_empty() -> None:
    assert [m.uri for m in parse("@/nonexistent\na", {})] == ["ssh://a"]
    assert parse("@", {}) == ()


def test_unreadable_include_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_machines(
            "a\n@/etc/nix/secret",
            read_file=reader({}, broken=frozenset({"/etc/nix/secret"})),
            default_system=SYSTEM,
            source="/etc/nix/machines",
        )
    assert str(info.value) == (
        "/etc/nix/machines:2: cannot read included file '/etc/nix/secret': Permission denied"
    )


def test_errors_in_included_files_name_that_file() -> None:
    files = {"/m1": "ok\n@/m2", "/m2": "\n\nbad - - many"}
    with pytest.raises(ConfigError) as info:
        parse("@/m1", files)
    assert str(info.value).startswith("/m2:3: field 4 (max jobs): 'many'")


@pytest.mark.parametrize(
    ("files", "start"),
    [
        ({"/a": "@/a"}, "/a"),
        ({"/a": "x\n@/b", "/b": "@/c", "/c": "y ; @/a"}, "/a"),
        ({"/a": "@/b", "/b": "@/b"}, "/a"),
    ],
)
def test_include_cycle(files: dict[str, str], start: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"@{start}", files)
    assert "include cycle" in str(info.value)


def test_include_cycle_message() -> None:
    files = {"/a": "x\n@/b", "/b": "@/a"}
    with pytest.raises(ConfigError) as info:
        parse("@/a", files)
    assert str(info.value) == "/b:1: include cycle: '/a' -> '/b' -> '/a'"


def test_same_file_twice_is_not_a_cycle() -> None:
    files = {"/a": "@/b\n@/b", "/b": "h"}
    assert len(parse("@/a", files)) == 2


def test_include_depth_limit() -> None:
    deep = {f"/f{i}": f"@/f{i + 1}" for i in range(100)}
    with pytest.raises(ConfigError, match="nested more than"):
        parse("@/f0", deep)
    ok = {f"/f{i}": f"@/f{i + 1}" for i in range(MAX_INCLUDE_DEPTH - 1)}
    ok[f"/f{MAX_INCLUDE_DEPTH - 1}"] = "h"
    assert len(parse("@/f0", ok)) == 1


def test_include_bomb_is_stopped() -> None:
    # each file includes the next one ten times: 10**30 lines if not stopped
    files = {f"/f{i}": "\n".join([f"@/f{i + 1}"] * 10) for i in range(30)}
    with pytest.raises(ConfigError, match=f"more than {MAX_INCLUDES} files"):
        parse("@/f0", files)


def test_relative_include_paths_go_to_the_reader_as_written() -> None:
    seen: list[str] = []

    def read(path: str) -> str | None:
        seen.append(path)
        return None

    parse_machines("@ machines.d/one \t# c\n@./two", read_file=read, default_system=SYSTEM)
    assert seen == ["machines.d/one", "./two"]


# ---------------------------------------------------------------------------------------
# NIX_REMOTE_SYSTEMS


@pytest.mark.parametrize(
    ("setting", "env", "expected"),
    [
        ("@/etc/nix/machines", None, "@/etc/nix/machines"),
        ("a ; b", None, "a ; b"),
        ("@/etc/nix/machines", "/one", "@/one"),
        ("@/etc/nix/machines", "/one:/two", "@/one\n@/two"),
        ("@/etc/nix/machines", "/one::/two:", "@/one\n@/two"),
        ("@/etc/nix/machines", "", ""),
    ],
)
def test_machines_from_env_and_setting(setting: str, env: str | None, expected: str) -> None:
    assert machines_from_env_and_setting(setting, env) == expected


def test_several_nix_remote_systems_files_all_count() -> None:
    """Unlike Nix 2.8, which joins them with spaces into one bogus include (§2.1)."""
    text = machines_from_env_and_setting("ignored", "/one:/two")
    assert [m.uri for m in parse(text, {"/one": "a", "/two": "b"})] == ["ssh://a", "ssh://b"]


# ---------------------------------------------------------------------------------------
# Host keys, rendering, JSON


@pytest.mark.parametrize(
    "data", [b"", b"a", b"ab", b"abc", b"ssh-ed25519 AAAA root@h\n", bytes(range(256))]
)
def test_decode_host_key_agrees_with_base64(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert decode_host_key(encoded) == data
    assert decode_host_key(encoded.rstrip("=")) == data
    assert decode_host_key(encoded + "=garbage") == data


def test_decode_host_key_skips_newlines() -> None:
    assert decode_host_key("QU\nJD") == b"ABC"


def test_render_seed_lines() -> None:
    lines = [render_machine(m) for m in parse(REMOTE_SYSTEMS_CONF)]
    assert lines == [
        (
            "ssh://nix@mcflurry.labs.cs.uu.nl x86_64-darwin"
            " /home/nix/.ssh/id_quarterpounder_auto 2 1 - - -"
        ),
        "ssh://nix@scratchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 1 kvm - -",
        "ssh://nix@itchy.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2 - - -",
        "ssh://nix@poochie.labs.cs.uu.nl i686-linux /home/nix/.ssh/id_scratchy_auto 8 2 kvm perf -",
    ]


@pytest.mark.parametrize(
    ("machine", "line"),
    [
        (Machine(uri="ssh://h", systems=()), "ssh://h , - 1 1 - - -"),
        (Machine(uri="ssh://h", systems=("-",)), "ssh://h -, - 1 1 - - -"),
        (
            Machine(uri="ssh://h", systems=("a",), supported_features=frozenset({"-"})),
            "ssh://h a - 1 1 -, - -",
        ),
        (Machine(uri="ssh://h", systems=("a",), speed_factor=2.5), "ssh://h a - 1 2.5 - - -"),
        (
            Machine(
                uri="ssh://h",
                systems=("a", "b"),
                ssh_key="/k",
                max_jobs=3,
                supported_features=frozenset({"z", "y"}),
                mandatory_features=frozenset({"y"}),
                public_host_key="QUJD",
            ),
            "ssh://h a,b /k 3 1 y,z y QUJD",
        ),
    ],
)
def test_render_machine(machine: Machine, line: str) -> None:
    assert render_machine(machine) == line
    (back,) = parse(line)
    assert back == dataclasses.replace(machine, source="<builders>:1")


@pytest.mark.parametrize(
    "machine",
    [
        Machine(uri="ssh://a b", systems=("x",)),
        Machine(uri="ssh://a;b", systems=("x",)),
        Machine(uri="ssh://a#b", systems=("x",)),
        Machine(uri="@file", systems=("x",)),
        Machine(uri="-", systems=("x",)),
        Machine(uri="", systems=("x",)),
        Machine(uri="h", systems=("a,b",)),
        Machine(uri="h", systems=("",)),
        Machine(uri="h", systems=("x",), ssh_key="-"),
        Machine(uri="h", systems=("x",), ssh_key="a key"),
        Machine(uri="h", systems=("x",), supported_features=frozenset({"a b"})),
    ],
)
def test_render_refuses_what_cannot_be_written(machine: Machine) -> None:
    with pytest.raises(ValueError, match=r"cannot be written|would read as an include"):
        render_machine(machine)


def test_machine_to_json_keys_and_order() -> None:
    m = one(f"h b,a /k 2 3 z,y,x w {HOST_KEY}")
    data = machine_to_json(m)
    assert list(data) == [
        "uri",
        "systems",
        "ssh_key",
        "max_jobs",
        "speed_factor",
        "supported_features",
        "mandatory_features",
        "public_host_key",
    ]
    assert data["systems"] == ["b", "a"]  # systems keep their order
    assert data["supported_features"] == ["x", "y", "z"]  # sets are sorted
    assert data["public_host_key"] == HOST_KEY


def _fields(m: Machine) -> dict[str, object]:
    return {name: getattr(m, name) for name in Machine.__dataclass_fields__}


# ---------------------------------------------------------------------------------------
# Properties


_WORD_CHARS = string.ascii_letters + string.digits + "-_.@:/+=?&%~"
words = st.text(_WORD_CHARS, min_size=1, max_size=12).filter(lambda w: w != "-")
uris = st.one_of(
    words.map(lambda w: f"ssh://{w}"),
    words.map(lambda w: f"ssh-ng://{w}"),
    words.filter(lambda w: not w.startswith("@")).map(normalise_uri),
)
machines_st = st.builds(
    Machine,
    uri=uris,
    systems=st.lists(words.filter(lambda w: "," not in w), max_size=4, unique=True).map(tuple),
    ssh_key=st.none() | words,
    max_jobs=st.integers(0, MAX_UINT),
    speed_factor=st.one_of(
        st.integers(1, 10**6).map(float),
        st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
    ),
    supported_features=st.frozensets(words.filter(lambda w: "," not in w), max_size=4),
    mandatory_features=st.frozensets(words.filter(lambda w: "," not in w), max_size=4),
    public_host_key=st.none()
    | st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode()),
)


@settings(max_examples=500)
@given(st.lists(machines_st, max_size=5), st.sampled_from(["\n", ";", " ; ", "\n\n# c\n"]))
def test_render_parse_round_trip(machines: list[Machine], separator: str) -> None:
    text = separator.join(render_machine(m) for m in machines)
    parsed = parse(text)
    assert [_fields(m) | {"source": ""} for m in parsed] == [
        _fields(m) | {"source": ""} for m in machines
    ]


@given(st.binary(max_size=200))
def test_decode_host_key_matches_base64_module(data: bytes) -> None:
    assert decode_host_key(base64.b64encode(data).decode()) == data


# Fuzzing: whatever the text, parse_machines returns machines or raises ConfigError.

_TOKENS = [
    "-",
    "h",
    "nix@b",
    "ssh://x",
    "ssh-ng://y",
    "/p",
    "auto",
    "local?root=/r",
    "?a=b",
    "@",
    "x86_64-linux",
    "a,,b",
    ",",
    "0",
    "1",
    "+7",
    "-1",
    "007",
    "4294967295",
    "4294967296",
    "99999999999999999999999999",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "1e999",
    "-0",
    "nan",
    "inf",
    "Infinity",
    "0x10",
    "1_0",
    "\u0663",
    "QUJD",
    "QUJDRA==",
    "QQ==x",
    "=",
    "a$b",
    "Zm9v\x00",
    "\x0b",
    "\xa0",
    "\u2028",
    "\x85",
    "\ud800",
    "é",
    "#",
    ";",
    "\n",
    "\r\n",
    "\t",
    " ",
    "  ",
]
_FIELD_VALUES = [
    ["h", "ssh://u@h", "ssh-ng://h", "/p", "-", "auto"],
    ["-", "x86_64-linux", "a,b", ",", "é"],
    ["-", "/k", "k"],
    ["-", "0", "8", "+1", "x", "-1", "4294967296"],
    ["-", "0", "2", "2.5", "1e3", "nan", "-1", "1e999"],
    ["-", "kvm", "a,,b", ","],
    ["-", "perf", ","],
    ["-", "QUJD", "QUJDRA==", "QQ==x", "=", "a$b", "QU-D", "é"],
]
_PATHS = ["/a", "/b", "/c", "rel", "./rel", "", " /a", "/broken", "/missing"]


@st.composite
def _machine_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 4:  # include-heavy: pieces that are mostly @paths
        pieces = draw(
            st.lists(
                st.sampled_from([f"@{p}" for p in _PATHS] + ["@ /a # c", "h", "#"]), max_size=8
            )
        )
        return draw(st.sampled_from(["\n", ";", " ; "])).join(pieces)
    if kind == 5:  # 8-field lines, each field mostly valid, sometimes not
        lines = []
        for _ in range(draw(st.integers(1, 4))):
            fields = [draw(st.sampled_from(choices)) for choices in _FIELD_VALUES]
            fields += draw(st.lists(st.sampled_from(_TOKENS), max_size=2))
            lines.append(" ".join(fields[: draw(st.integers(1, len(fields)))]))
        return "\n".join(lines)
    if kind == 0:  # token soup
        tokens = draw(st.lists(st.sampled_from(_TOKENS + [f"@{p}" for p in _PATHS]), max_size=30))
        return "".join(t + draw(st.sampled_from(["", " ", "\n", ";", "\t"])) for t in tokens)
    if kind == 1:  # random bytes decoded as text
        data = draw(st.binary(max_size=300))
        codec = draw(st.sampled_from(["latin-1", "utf-8"]))
        return data.decode(codec, "surrogateescape" if codec == "utf-8" else "strict")
    if kind == 2:  # random unicode text
        return draw(st.text(max_size=300))
    # kind 3: lines of plausible fields
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        fields = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(_TOKENS),
                    st.integers(-(2**70), 2**70).map(str),
                    st.floats().map(repr),
                    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                    st.text(min_size=1, max_size=10),
                ),
                min_size=1,
                max_size=10,
            )
        )
        lines.append(" ".join(fields))
    return "\n".join(lines)


def _random_machine_text(rng: random.Random) -> str:
    """The shapes of `_machine_texts`, drawn from a seeded generator (for the 10,000 cases)."""
    kind = rng.randrange(6)
    if kind == 0:
        tokens = [rng.choice(_TOKENS + [f"@{p}" for p in _PATHS]) for _ in range(rng.randrange(30))]
        return "".join(t + rng.choice(["", " ", "\n", ";", "\t"]) for t in tokens)
    if kind == 1:
        data = rng.randbytes(rng.randrange(300))
        return (
            data.decode("utf-8", "surrogateescape") if rng.randrange(2) else data.decode("latin-1")
        )
    if kind == 2:
        return (
            "".join(
                chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x10FFFF)]))
                for _ in range(rng.randrange(300))
            )
            .encode("utf-8", "surrogatepass")
            .decode("utf-8", "replace")
        )
    if kind == 4:
        pieces = [rng.choice([f"@{p}" for p in _PATHS] + ["@ /a # c", "h", "#"]) for _ in range(8)]
        return rng.choice(["\n", ";", " ; "]).join(pieces[: rng.randrange(9)])
    lines = []
    for _ in range(rng.randrange(1, 5)):
        if kind == 5:
            fields = [rng.choice(choices) for choices in _FIELD_VALUES]
            fields = fields[: rng.randint(1, len(fields))]
        else:
            fields = [
                rng.choice(
                    [
                        rng.choice(_TOKENS),
                        str(rng.randint(-(2**70), 2**70)),
                        repr(rng.uniform(-1e300, 1e300)),
                        base64.b64encode(rng.randbytes(rng.randrange(40))).decode(),
                    ]
                )
                for _ in range(rng.randint(1, 10))
            ]
        lines.append(" ".join(fields))
    return "\n".join(lines)


def _check_parse(
    text: str, files: dict[str, str], note: Callable[[str], None] = lambda _: None
) -> None:
    """Parse `text` (with `files` to include): a ConfigError naming file and line, or machines
    that hold only valid values and render back to themselves."""
    read = reader(files, broken=frozenset({"/broken"}))
    try:
        machines = parse_machines(
            text, source="/etc/nix/machines", read_file=read, default_system=SYSTEM
        )
    except ConfigError as err:
        error: ConfigError | None = err
    else:
        error = None
    if error is not None:
        note(f"error in field {error.field}" if error.field else "error: include")
        message = str(error)
        assert "\n" not in message
        assert re.match(r"[^:]*:\d+: ", message), message
        assert error.line is not None
        assert error.line >= 1
        return
    note("parsed: none" if not machines else "parsed: some")
    for m in machines:
        assert m.uri
        assert m.uri != "-"
        assert not m.uri.startswith("@")
        assert 0 <= m.max_jobs <= MAX_UINT
        assert math.isfinite(m.speed_factor)
        assert m.speed_factor > 0
        assert all(m.systems)
        assert re.search(r":\d+$", m.source)
        if m.public_host_key is not None:
            decode_host_key(m.public_host_key)
        # a parsed machine renders, unless it holds characters the syntax cannot carry
        try:
            line = render_machine(m)
        except ValueError:
            continue
        (back,) = parse_machines(line, read_file=read, default_system=SYSTEM)
        assert _fields(back) | {"source": ""} == _fields(m) | {"source": ""}


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    _machine_texts(),
    st.dictionaries(st.sampled_from(_PATHS), _machine_texts(), max_size=6),
)
def test_fuzz_only_config_errors_escape(text: str, files: dict[str, str]) -> None:
    _check_parse(text, files, event)


def test_fuzz_ten_thousand_seeded_machines_files() -> None:
    for case in range(10_000):
        rng = random.Random(f"machines-{case}")
        files = {rng.choice(_PATHS): _random_machine_text(rng) for _ in range(rng.randrange(7))}
        try:
            _check_parse(_random_machine_text(rng), files)
        except BaseException as err:
            err.add_note(f"fuzz case machines-{case}")
            raise


@given(st.text(max_size=50), st.text(max_size=50) | st.none())
def test_machines_from_env_never_fails(setting: str, env: str | None) -> None:
    assume(env is None or "\n" not in env)
    text = machines_from_env_and_setting(setting, env)
    if env is not None:
        assert all(line.startswith("@") for line in text.split("\n") if line)
