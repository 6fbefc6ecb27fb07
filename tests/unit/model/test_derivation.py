"""Derivations: golden .drv files from Nix 2.8, ATerm round trips, errors, BasicDerivation, JSON.

The golden texts were written by `nix-instantiate tests/fixtures/drvs.nix -A <attr>` (Nix 2.8);
the SHOW_* values are `nix show-derivation` output for two of them.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ParseError
from nixdist.model import nixbase32
from nixdist.model.derivation import (
    MAX_DRV_SIZE,
    BasicDerivation,
    Derivation,
    DerivationOutput,
    DerivationParseError,
    OutputKind,
    parse_derivation,
    render_derivation,
    render_show_json,
    required_system_features,
    structured_attrs,
    to_basic,
)
from nixdist.model.hashes import Hash, HashAlgo

GOLDEN = {
    "multi": (
        "/nix/store/wizi0ddvhlv04pphzxk4ym05mag4s7iq-drvs-multi.drv",
        (
            'Derive([("bin","/nix/store/yvbhs50w8lzpzsj5ij58frqy5hbhlxvd-drvs-multi-bin","","")'
            ',("dev","/nix/store/zcl628gkfka23ln9xbj220xbkivgh7d3-drvs-multi-dev","",""),("lib"'
            ',"/nix/store/7zf3a56rjgg7cqbqv4qf9q6sn6xghqgy-drvs-multi-lib","",""),("out","/nix/'
            'store/jk2c91xpmgiij7g8h9fyrbx8v6gidl4f-drvs-multi","","")],[],[],"x86_64-linux","/'
            'bin/sh",["-c","for o in $out $dev $bin $lib; do echo $o > $o; done"],[("bin","/nix'
            '/store/yvbhs50w8lzpzsj5ij58frqy5hbhlxvd-drvs-multi-bin"),("builder","/bin/sh"),("d'
            'ev","/nix/store/zcl628gkfka23ln9xbj220xbkivgh7d3-drvs-multi-dev"),("lib","/nix/sto'
            're/7zf3a56rjgg7cqbqv4qf9q6sn6xghqgy-drvs-multi-lib"),("name","drvs-multi"),("out",'
            '"/nix/store/jk2c91xpmgiij7g8h9fyrbx8v6gidl4f-drvs-multi"),("outputs","out dev bin '
            'lib"),("salt",""),("system","x86_64-linux")])'
        ),
    ),
    "fixedFlat": (
        "/nix/store/q207k38cqvcpxcnl1f7dri83106ji28b-drvs-fixed-flat.drv",
        (
            'Derive([("out","/nix/store/29icrnhkbyb934mj9bf2xrpy6hz739fm-drvs-fixed-flat","sha2'
            '56","ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")],[],[],"x8'
            '6_64-linux","/bin/sh",["-c","printf abc > $out"],[("builder","/bin/sh"),("name","d'
            'rvs-fixed-flat"),("out","/nix/store/29icrnhkbyb934mj9bf2xrpy6hz739fm-drvs-fixed-fl'
            'at"),("outputHash","ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015'
            'ad"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("salt",""),("system","'
            'x86_64-linux")])'
        ),
    ),
    "fixedRecursive": (
        "/nix/store/k250xxy0d7z9k4ff2z6jjg0wz7k40lvg-drvs-fixed-recursive.drv",
        (
            'Derive([("out","/nix/store/qhfd1fr4hr7j9m8l915763dmfq86w635-drvs-fixed-recursive",'
            '"r:sha256","e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")],[]'
            ',[],"x86_64-linux","/bin/sh",["-c","echo ok > $out"],[("builder","/bin/sh"),("name'
            '","drvs-fixed-recursive"),("out","/nix/store/qhfd1fr4hr7j9m8l915763dmfq86w635-drvs'
            '-fixed-recursive"),("outputHash","sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSu'
            'FU="),("outputHashMode","recursive"),("salt",""),("system","x86_64-linux")])'
        ),
    ),
    "withInputs": (
        "/nix/store/ncz9gxqxisy6lsjdlnyy0frfisdm53kz-drvs-with-inputs.drv",
        (
            'Derive([("out","/nix/store/2anaqmcdsv6idcbfpnzaaidfrfy3kiq5-drvs-with-inputs","","'
            '")],[("/nix/store/7kj6qxg7j7ry9hv4pdn19qkmiz7dkqcw-drvs-simple.drv",["out"]),("/ni'
            'x/store/k250xxy0d7z9k4ff2z6jjg0wz7k40lvg-drvs-fixed-recursive.drv",["out"]),("/nix'
            '/store/q207k38cqvcpxcnl1f7dri83106ji28b-drvs-fixed-flat.drv",["out"]),("/nix/store'
            '/wizi0ddvhlv04pphzxk4ym05mag4s7iq-drvs-multi.drv",["dev","lib"])],["/nix/store/axs'
            'ilqzb1l02hijpd4s49l33d47lql5v-drvs-input.txt","/nix/store/c7xajym9ypj9vn1jrjbl5hp7'
            'fribbzr3-drvs-src.txt"],"x86_64-linux","/bin/sh",["-c","cat /nix/store/zcl628gkfka'
            "23ln9xbj220xbkivgh7d3-drvs-multi-dev /nix/store/7zf3a56rjgg7cqbqv4qf9q6sn6xghqgy-d"
            "rvs-multi-lib /nix/store/29icrnhkbyb934mj9bf2xrpy6hz739fm-drvs-fixed-flat /nix/sto"
            "re/c7xajym9ypj9vn1jrjbl5hp7fribbzr3-drvs-src.txt /nix/store/axsilqzb1l02hijpd4s49l"
            '33d47lql5v-drvs-input.txt > $out"],[("builder","/bin/sh"),("deps","/nix/store/kjv4'
            "807s2xbp39n07a0wmklizqjc5p9z-drvs-simple /nix/store/qhfd1fr4hr7j9m8l915763dmfq86w6"
            '35-drvs-fixed-recursive"),("literal","/nix/store/axsilqzb1l02hijpd4s49l33d47lql5v-'
            'drvs-input.txt"),("name","drvs-with-inputs"),("out","/nix/store/2anaqmcdsv6idcbfpn'
            'zaaidfrfy3kiq5-drvs-with-inputs"),("salt",""),("src","/nix/store/c7xajym9ypj9vn1jr'
            'jbl5hp7fribbzr3-drvs-src.txt"),("system","x86_64-linux")])'
        ),
    ),
    "tricky": (
        "/nix/store/sqqm83yjys4057zvxhwxn7dfaxfgnixj-drvs-tricky.drv",
        (
            'Derive([("out","/nix/store/hx96rkb8bynda53j1mhwz6q19hkn8cwf-drvs-tricky","","")],['
            '],[],"x86_64-linux","/bin/sh",["-c","echo \\"$quote\\" > $out","arg\\twith\\ttabs"'
            ',"arg\\nwith\\nnewlines","","\\\\"],[("backslash","a\\\\b\\\\\\\\c\\\\n"),("bool",'
            '"1"),("bool2",""),("builder","/bin/sh"),("control","\x01 \x1f \x7f"),("cr","a\\rb'
            '\\r\\n"),("dollar","$out ${x} \' ( ) , [ ] ; ="),("empty",""),("key\\"quote","key '
            'with a quote"),("list","a b c 1 1 "),("name","drvs-tricky"),("newline","line1\\nli'
            'ne2\\n"),("number","42"),("out","/nix/store/hx96rkb8bynda53j1mhwz6q19hkn8cwf-drvs-'
            'tricky"),("quote","say \\"hi\\""),("salt",""),("system","x86_64-linux"),("tab","a'
            '\\tb"),("unicode","é ü ß 日本 🎉"),("weird key","key with a space")])'
        ),
    ),
    "structured": (
        "/nix/store/ncsbyj8vldjav5ldqbpfdiz089wknv1r-drvs-structured.drv",
        (
            'Derive([("doc","/nix/store/lnv48svvghhyxrd13hzy6fj8kszlk2i0-drvs-structured-doc","'
            '",""),("out","/nix/store/d6yqpdc5a040nvkya7wrbp9c00xmzvdp-drvs-structured","","")]'
            ',[("/nix/store/7kj6qxg7j7ry9hv4pdn19qkmiz7dkqcw-drvs-simple.drv",["out"])],[],"x86'
            '_64-linux","/bin/sh",["-c","echo ok > $out"],[("__json","{\\"builder\\":\\"/bin/sh'
            '\\",\\"dep\\":\\"/nix/store/kjv4807s2xbp39n07a0wmklizqjc5p9z-drvs-simple\\",\\"nam'
            'e\\":\\"drvs-structured\\",\\"nested\\":{\\"a\\":[1,2,{\\"b\\":\\"c\\\\nd\\"}],\\"'
            'e\\":null,\\"f\\":1.5},\\"outputs\\":[\\"out\\",\\"doc\\"],\\"requiredSystemFeatur'
            'es\\":[\\"benchmark\\"],\\"salt\\":\\"\\",\\"system\\":\\"x86_64-linux\\",\\"text'
            '\\":\\"quote \\\\\\" backslash \\\\\\\\ tab \\\\t\\"}"),("doc","/nix/store/lnv48sv'
            'vghhyxrd13hzy6fj8kszlk2i0-drvs-structured-doc"),("out","/nix/store/d6yqpdc5a040nvk'
            'ya7wrbp9c00xmzvdp-drvs-structured")])'
        ),
    ),
    "features": (
        "/nix/store/3wsap3cqf9qzg30gqrgfx0zgrflzd849-drvs-features.drv",
        (
            'Derive([("out","/nix/store/avyh9zdwkapaw64l9xlyrfm6g4x669rp-drvs-features","","")]'
            ',[],[],"x86_64-linux","/bin/sh",["-c","echo ok > $out"],[("allowSubstitutes",""),('
            '"builder","/bin/sh"),("name","drvs-features"),("out","/nix/store/avyh9zdwkapaw64l9'
            'xlyrfm6g4x669rp-drvs-features"),("preferLocalBuild","1"),("requiredSystemFeatures"'
            ',"big-parallel kvm"),("salt",""),("system","x86_64-linux")])'
        ),
    ),
}

SHOW_WITHINPUTS = {
    "/nix/store/ncz9gxqxisy6lsjdlnyy0frfisdm53kz-drvs-with-inputs.drv": {
        "outputs": {
            "out": {
                "path": "/nix/store/2anaqmcdsv6idcbfpnzaaidfrfy3kiq5-drvs-with-inputs",
            },
        },
        "inputSrcs": [
            "/nix/store/axsilqzb1l02hijpd4s49l33d47lql5v-drvs-input.txt",
            "/nix/store/c7xajym9ypj9vn1jrjbl5hp7fribbzr3-drvs-src.txt",
        ],
        "inputDrvs": {
            "/nix/store/7kj6qxg7j7ry9hv4pdn19qkmiz7dkqcw-drvs-simple.drv": [
                "out",
            ],
            "/nix/store/k250xxy0d7z9k4ff2z6jjg0wz7k40lvg-drvs-fixed-recursive.drv": [
                "out",
            ],
            "/nix/store/q207k38cqvcpxcnl1f7dri83106ji28b-drvs-fixed-flat.drv": [
                "out",
            ],
            "/nix/store/wizi0ddvhlv04pphzxk4ym05mag4s7iq-drvs-multi.drv": [
                "dev",
                "lib",
            ],
        },
        "system": "x86_64-linux",
        "builder": "/bin/sh",
        "args": [
            "-c",
            (
                "cat /nix/store/zcl628gkfka23ln9xbj220xbkivgh7d3-drvs-multi-dev /nix/store/7zf3"
                "a56rjgg7cqbqv4qf9q6sn6xghqgy-drvs-multi-lib /nix/store/29icrnhkbyb934mj9bf2xrp"
                "y6hz739fm-drvs-fixed-flat /nix/store/c7xajym9ypj9vn1jrjbl5hp7fribbzr3-drvs-src"
                ".txt /nix/store/axsilqzb1l02hijpd4s49l33d47lql5v-drvs-input.txt > $out"
            ),
        ],
        "env": {
            "builder": "/bin/sh",
            "deps": (
                "/nix/store/kjv4807s2xbp39n07a0wmklizqjc5p9z-drvs-simple /nix/store/qhfd1fr4hr7"
                "j9m8l915763dmfq86w635-drvs-fixed-recursive"
            ),
            "literal": "/nix/store/axsilqzb1l02hijpd4s49l33d47lql5v-drvs-input.txt",
            "name": "drvs-with-inputs",
            "out": "/nix/store/2anaqmcdsv6idcbfpnzaaidfrfy3kiq5-drvs-with-inputs",
            "salt": "",
            "src": "/nix/store/c7xajym9ypj9vn1jrjbl5hp7fribbzr3-drvs-src.txt",
            "system": "x86_64-linux",
        },
    },
}

SHOW_FIXEDFLAT = {
    "/nix/store/q207k38cqvcpxcnl1f7dri83106ji28b-drvs-fixed-flat.drv": {
        "outputs": {
            "out": {
                "path": "/nix/store/29icrnhkbyb934mj9bf2xrpy6hz739fm-drvs-fixed-flat",
                "hashAlgo": "sha256",
                "hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            },
        },
        "inputSrcs": [],
        "inputDrvs": {},
        "system": "x86_64-linux",
        "builder": "/bin/sh",
        "args": [
            "-c",
            "printf abc > $out",
        ],
        "env": {
            "builder": "/bin/sh",
            "name": "drvs-fixed-flat",
            "out": "/nix/store/29icrnhkbyb934mj9bf2xrpy6hz739fm-drvs-fixed-flat",
            "outputHash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "outputHashAlgo": "sha256",
            "outputHashMode": "flat",
            "salt": "",
            "system": "x86_64-linux",
        },
    },
}


def golden(name: str) -> tuple[str, str]:
    return GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_round_trip(name: str) -> None:
    _, text = golden(name)
    drv = parse_derivation(text)
    assert render_derivation(drv) == text


def test_golden_show_json() -> None:
    for name, expected in [("withInputs", SHOW_WITHINPUTS), ("fixedFlat", SHOW_FIXEDFLAT)]:
        path, text = golden(name)
        assert render_show_json(path, parse_derivation(text)) == expected


def test_multi_output_fields() -> None:
    _, text = golden("multi")
    drv = parse_derivation(text)
    assert list(drv.outputs) == ["bin", "dev", "lib", "out"]
    assert all(o.kind is OutputKind.INPUT_ADDRESSED for o in drv.outputs.values())
    assert drv.outputs["dev"].path.endswith("-drvs-multi-dev")
    assert drv.input_drvs == {}
    assert drv.input_srcs == ()
    assert drv.builder == "/bin/sh"
    assert drv.args == ("-c", "for o in $out $dev $bin $lib; do echo $o > $o; done")
    assert drv.env["outputs"] == "out dev bin lib"
    assert not drv.is_fixed_output


def test_fixed_outputs() -> None:
    flat = parse_derivation(golden("fixedFlat")[1]).outputs["out"]
    assert flat.kind is OutputKind.FIXED
    assert not flat.is_recursive
    assert flat.fixed_hash() == Hash.of(HashAlgo.SHA256, b"abc")
    recursive = parse_derivation(golden("fixedRecursive")[1])
    assert recursive.is_fixed_output
    assert recursive.outputs["out"].is_recursive
    assert recursive.outputs["out"].hash_algo == "r:sha256"


def test_inputs() -> None:
    _, text = golden("withInputs")
    drv = parse_derivation(text)
    assert [(p.split("-", 1)[1], outs) for p, outs in drv.input_drvs.items()] == [
        ("drvs-simple.drv", ("out",)),
        ("drvs-fixed-recursive.drv", ("out",)),
        ("drvs-fixed-flat.drv", ("out",)),
        ("drvs-multi.drv", ("dev", "lib")),
    ]
    assert [p.split("-", 1)[1] for p in drv.input_srcs] == ["drvs-input.txt", "drvs-src.txt"]


def test_tricky_env() -> None:
    _, text = golden("tricky")
    drv = parse_derivation(text)
    assert drv.env["quote"] == 'say "hi"'
    assert drv.env["backslash"] == "a\\b\\\\c\\n"
    assert drv.env["newline"] == "line1\nline2\n"
    assert drv.env["cr"] == "a\rb\r\n"
    assert drv.env["tab"] == "a\tb"
    assert drv.env["unicode"] == "é ü ß 日本 🎉"
    assert drv.env["control"] == "\x01 \x1f \x7f"
    assert drv.env['key"quote'] == "key with a quote"
    assert drv.args[-3:] == ("arg\nwith\nnewlines", "", "\\")


def test_features_and_structured_attrs() -> None:
    features = parse_derivation(golden("features")[1])
    assert required_system_features(features) == {"big-parallel", "kvm"}
    assert structured_attrs(features) is None
    structured = parse_derivation(golden("structured")[1])
    attrs = structured_attrs(structured)
    assert attrs is not None
    assert attrs["nested"] == {"a": [1, 2, {"b": "c\nd"}], "e": None, "f": 1.5}
    assert required_system_features(structured) == {"benchmark"}
    assert required_system_features(parse_derivation(golden("multi")[1])) == frozenset()


def test_floating_outputs_need_ca_derivations() -> None:
    drv = parse_derivation(
        'Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],'
        '[("requiredSystemFeatures","kvm  big-parallel\\n")])'
    )
    assert drv.outputs["out"].kind is OutputKind.FLOATING
    assert required_system_features(drv) == {"kvm", "big-parallel", "ca-derivations"}


@pytest.mark.parametrize(
    ("output", "kind", "json_"),
    [
        (
            DerivationOutput(path="/nix/store/x"),
            OutputKind.INPUT_ADDRESSED,
            {"path": "/nix/store/x"},
        ),
        (DerivationOutput(path=""), OutputKind.DEFERRED, {}),
        (
            DerivationOutput(path="", hash_algo="r:sha256"),
            OutputKind.FLOATING,
            {"hashAlgo": "r:sha256"},
        ),
        (
            DerivationOutput(path="", hash_algo="sha256", hash="impure"),
            OutputKind.IMPURE,
            {"hashAlgo": "sha256", "impure": True},
        ),
    ],
)
def test_output_kinds(output: DerivationOutput, kind: OutputKind, json_: dict[str, object]) -> None:
    assert output.kind is kind
    drv = _drv(outputs={"out": output})
    assert render_show_json("/d.drv", drv)["/d.drv"]["outputs"] == {"out": json_}
    if kind is not OutputKind.INPUT_ADDRESSED:
        with pytest.raises(ValueError, match="no fixed hash"):
            output.fixed_hash()


def test_show_json_normalises_fixed_hash_to_base16() -> None:
    digest = Hash.of(HashAlgo.SHA256, b"abc")
    drv = parse_derivation(
        f'Derive([("out","/nix/store/{"0" * 32}-x","sha256","{digest.to_nix32()}")],'
        '[],[],"s","b",[],[])'
    )
    out = render_show_json("/d.drv", drv)["/d.drv"]["outputs"]
    assert out == {
        "out": {
            "path": f"/nix/store/{'0' * 32}-x",
            "hashAlgo": "sha256",
            "hash": digest.to_base16(),
        }
    }


# --- to_basic (nix-protocols.md §1.9 step 8) ---


def test_to_basic_with_input_drvs_replaces_input_srcs() -> None:
    path, text = golden("withInputs")
    drv = parse_derivation(text)
    closure = [f"/nix/store/{c * 32}-in" for c in "9a0"] + [f"/nix/store/{'a' * 32}-in"]
    basic = to_basic(drv, path, closure)
    assert isinstance(basic, BasicDerivation)
    assert basic.name == "drvs-with-inputs"
    assert basic.input_srcs == tuple(f"/nix/store/{c * 32}-in" for c in "09a")
    assert basic.outputs == drv.outputs
    assert (basic.platform, basic.builder, basic.args, basic.env) == (
        drv.platform,
        drv.builder,
        drv.args,
        drv.env,
    )
    with pytest.raises(ValueError, match="input paths are needed"):
        to_basic(drv, path, None)


def test_to_basic_without_input_drvs_keeps_input_srcs() -> None:
    drv = _drv(input_srcs=(f"/nix/store/{'1' * 32}-src",))
    path = f"/nix/store/{'2' * 32}-thing.drv"
    for inputs in (None, [f"/nix/store/{'3' * 32}-other"]):
        basic = to_basic(drv, path, inputs)
        assert basic.input_srcs == drv.input_srcs
        assert basic.name == "thing"


# --- errors ---

P = f"/nix/store/{'0' * 32}"
GOOD = f'Derive([("out","{P}-x","","")],[],[],"s","b",[],[])'


def test_good_minimal() -> None:
    assert render_derivation(parse_derivation(GOOD)) == GOOD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"offset 0: expected 'Derive\(\['"),
        ("Derive(", r"offset 0: expected 'Derive\(\['"),
        ('DrvWithVersion("xp-dyn-drv",[])', "DrvWithVersion"),
        (GOOD + " ", "offset 91: expected end of text after the derivation"),
        (GOOD[:-1], "expected '\\)', found end of text"),
        (GOOD.replace('"b"', '"b'), "'\"' closing the string"),
        (GOOD[:-10] + '"\\', "offset 83: expected '\"' closing the string, found end of text"),
        (GOOD[:-10] + '"a\\"', "'\"' closing the string"),
        (GOOD.replace("[],[],", "[] ,[],", 1), r"expected ',\['"),
        (GOOD.replace('"s"', '"s\\n"'), "no backslash in a field Nix writes unescaped"),
        ('Derive([],[],[],"s","b",[],[])', "at least one output"),
        (GOOD.replace('"out"', '""'), "an output name"),
        (GOOD.replace(f"{P}-x", f"{P}-x y"), "invalid character ' '"),
        (GOOD.replace(f"{P}-x", "/tmp/x"), "not in the store"),
        (GOOD.replace('"",""', '"md5",""'), "an empty path for a floating output"),
        (GOOD.replace('"",""', '"",""', 1).replace('","","")', '","","abc")'), "an empty hash"),
        (GOOD.replace('"",""', '"text:sha256","00"'), "a hash algorithm"),
        (GOOD.replace('"",""', '"sha384","00"'), "a hash algorithm"),
        (GOOD.replace('"",""', '"sha256","00"'), "wrong length for sha256"),
        (GOOD.replace('"",""', f'"sha256","sha256:{"0" * 64}"'), "must be a bare digest"),
        (GOOD.replace('"",""', f'"sha256","sha256-{"A" * 43}="'), "must be a bare digest"),
        (
            f'Derive([("out","{P}-x","",""),("out","{P}-x","","")],[],[],"s","b",[],[])',
            "outputs are not strictly sorted: 'out' before 'out'",
        ),
        (
            f'Derive([("out","{P}-x","",""),("dev","{P}-x","","")],[],[],"s","b",[],[])',
            "outputs are not strictly sorted",
        ),
        (GOOD.replace("[],[],", f'[("{P}-y",["out"])],[],', 1), "expected a .drv path"),
        (
            GOOD.replace("[],[],", f'[("{P}-y.drv",["out","dev"])],[],', 1),
            "output names are not strictly sorted",
        ),
        (
            GOOD.replace("[],[],", f'[("{P}-b.drv",[]),("{P}-a.drv",[])],[],', 1),
            "input derivations are not strictly sorted",
        ),
        (GOOD.replace("[],[],", f'[],["{P}-b","{P}-a"],', 1), "input sources are not"),
        (GOOD.replace("[],[],", f'[],["{P}-b",],', 1), "offset 123: expected '\"', found '\\],"),
        (GOOD.replace("[])", '[("b",""),("a","")])'), "environment variables are not strictly"),
        (GOOD.replace("[])", '[("a","");("b","")])'), "expected ',' or '\\]'"),
        (GOOD.replace("[],[])", '["a"],[("a")])'), "expected ','"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DerivationParseError, match=message) as info:
        parse_derivation(text)
    assert isinstance(info.value, ParseError)
    assert "offset" in str(info.value) or "DrvWithVersion" in str(info.value)


def test_other_store_dir() -> None:
    text = GOOD.replace("/nix/store", "/tmp/store")
    with pytest.raises(DerivationParseError, match="not in the store"):
        parse_derivation(text)
    assert render_derivation(parse_derivation(text, store_dir="/tmp/store")) == text


def test_size_limit() -> None:
    huge = GOOD.replace("[])", f'[("a","{"x" * MAX_DRV_SIZE}")])')
    with pytest.raises(DerivationParseError, match="larger than"):
        parse_derivation(huge)


def test_render_refuses_unescapable_fields() -> None:
    for bad in ('x"y', "x\\y"):
        with pytest.raises(ValueError, match="unescaped"):
            render_derivation(_drv(platform=bad))


def test_structured_attrs_errors() -> None:
    with pytest.raises(DerivationParseError, match="invalid __json"):
        structured_attrs(_drv(env={"__json": "{"}))
    with pytest.raises(DerivationParseError, match="not a JSON object"):
        structured_attrs(_drv(env={"__json": "[]"}))
    with pytest.raises(DerivationParseError, match="list of strings"):
        required_system_features(_drv(env={"__json": '{"requiredSystemFeatures": "kvm"}'}))


# --- round trips with arbitrary values ---


def _drv(**changes: object) -> Derivation:
    fields: dict[str, object] = {
        "outputs": {"out": DerivationOutput(path=f"{P}-x")},
        "input_drvs": {},
        "input_srcs": (),
        "platform": "x86_64-linux",
        "builder": "/bin/sh",
        "args": (),
        "env": {},
    }
    fields.update(changes)
    return Derivation(**fields)  # type: ignore[arg-type]


def _utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
raw_texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters='"\\'), max_size=30)
names = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789+-._?=", min_size=1, max_size=20)
store_paths = st.builds(
    lambda digest, name: f"/nix/store/{nixbase32.encode(digest)}-{name}",
    st.binary(min_size=20, max_size=20),
    names,
)
drv_paths = store_paths.map(lambda p: p + ".drv")


def _sorted_unique(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(strategy, max_size=4, unique=True).map(lambda xs: tuple(sorted(xs, key=_utf8)))


def _sorted_dict(
    keys: st.SearchStrategy[str], values: st.SearchStrategy[object]
) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(keys, values, max_size=5).map(
        lambda d: dict(sorted(d.items(), key=lambda kv: _utf8(kv[0])))
    )


outputs = st.one_of(
    store_paths.map(lambda p: DerivationOutput(path=p)),
    st.builds(
        lambda p, algo, rec, data: DerivationOutput(
            path=p,
            hash_algo=("r:" if rec else "") + algo,
            hash=Hash.of(HashAlgo(algo), data).to_base16(),
        ),
        store_paths,
        st.sampled_from([a.value for a in HashAlgo]),
        st.booleans(),
        st.binary(max_size=8),
    ),
    st.builds(
        lambda algo: DerivationOutput(path="", hash_algo=algo),
        st.sampled_from(["r:sha256", "sha1"]),
    ),
    st.just(DerivationOutput(path="")),
    st.just(DerivationOutput(path="", hash_algo="r:sha256", hash="impure")),
)

derivations = st.builds(
    Derivation,
    outputs=_sorted_dict(names, outputs).filter(bool),
    input_drvs=_sorted_dict(drv_paths, _sorted_unique(names)),
    input_srcs=_sorted_unique(store_paths),
    platform=raw_texts,
    builder=texts,
    args=st.lists(texts, max_size=4).map(tuple),
    env=_sorted_dict(texts, texts),
)


@given(derivations)
def test_render_parse_render(drv: Derivation) -> None:
    text = render_derivation(drv)
    parsed = parse_derivation(text)
    assert parsed == drv
    assert render_derivation(parsed) == text
    shown = render_show_json("/x.drv", parsed)["/x.drv"]
    assert json.loads(json.dumps(shown)) == shown
    assert shown["env"] == dict(drv.env)


def _reference_unescape(body: str) -> str:
    out, chars = [], iter(body)
    for char in chars:
        if char == "\\":
            escaped = next(chars)
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(escaped, escaped))
        else:
            out.append(char)
    return "".join(out)


@given(st.lists(st.sampled_from(["\\", "n", "r", "t", '"', "x", "\n", "é"]), max_size=30))
def test_string_unescaping_matches_reference(chars: list[str]) -> None:
    body = "".join(chars)
    quoted = '"' + body + '"'
    reference_ok = True
    try:
        expected = _reference_unescape(body)
    except StopIteration:
        reference_ok = False
    text = GOOD.replace('"b"', quoted)
    # The body is well formed iff no unescaped quote is inside and it does not end in an
    # unpaired backslash, and it is accepted iff it also uses only the escapes Nix writes
    # (so that it round-trips); then it must decode like the reference decoder.
    if reference_ok and _reference_closes_at_end(body) and _reference_escape(expected) == body:
        assert parse_derivation(text).builder == expected
    else:
        with pytest.raises(DerivationParseError):
            parse_derivation(text)


def _reference_escape(value: str) -> str:
    replacements = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(replacements.get(char, char) for char in value)


def _reference_closes_at_end(body: str) -> bool:
    index = 0
    while index < len(body):
        if body[index] == '"':
            return False
        index += 2 if body[index] == "\\" else 1
    return index == len(body)


@given(st.text(max_size=200))
def test_parse_arbitrary_text_fails_cleanly(text: str) -> None:
    try:
        drv = parse_derivation(text)
    except DerivationParseError:
        return
    assert render_derivation(drv) == text


@given(derivations, st.data())
def test_parse_mutated_text_fails_cleanly_or_round_trips(
    drv: Derivation, data: st.DataObject
) -> None:
    text = render_derivation(drv)
    at = data.draw(st.integers(0, len(text)))
    mutated = (
        text[:at]
        + data.draw(st.sampled_from(['"', "\\", ",", "]", ")", "(", "[", ""]))
        + text[at + 1 :]
    )
    try:
        parsed = parse_derivation(mutated)
    except DerivationParseError:
        return
    assert render_derivation(parsed) == mutated
