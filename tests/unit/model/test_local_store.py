"""The ``store`` setting as the hook reads it: which local store, and where its files are."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixdist.errors import ConfigError
from nixdist.model.local_store import DEFAULT_LOCAL_STORE, parse_local_store
from nixdist.model.store_path import StorePath

OUT = StorePath.parse("/nix/store/7z2vd8yr0ch0am1fb7kcnz2ha1ylzk31-hello-2.12")


@pytest.mark.parametrize("value", ["auto", "", "local", "daemon", " auto ", "unix:///x/socket"])
def test_the_machines_own_store(value: str) -> None:
    assert parse_local_store(value) == DEFAULT_LOCAL_STORE
    assert DEFAULT_LOCAL_STORE.real_path(OUT) == str(OUT)


@pytest.mark.parametrize("value", ["local://", "local?a=b", "local://?state=/s"])
def test_local_stores_with_other_settings_keep_them(value: str) -> None:
    store = parse_local_store(value)
    assert store.uri == value  # passed on to nix-store --store as it is
    assert store.real_path(OUT) == str(OUT)


@pytest.mark.parametrize(
    ("value", "real_dir"),
    [
        ("/tmp/chroot", "/tmp/chroot/nix/store"),
        ("local?root=/tmp/chroot", "/tmp/chroot/nix/store"),
        ("local://?root=/tmp/chroot", "/tmp/chroot/nix/store"),
        ("local:///tmp/chroot", "/tmp/chroot/nix/store"),  # as Nix 2.34 sends it
        ("local:///tmp/chroot?state=/s", "/tmp/chroot/nix/store"),
        ("local?root=/tmp/a%20b&state=/x", "/tmp/a b/nix/store"),
        ("local?root=/r&real=/elsewhere/store", "/elsewhere/store"),
        ("local?real=/elsewhere/store/", "/elsewhere/store"),
    ],
)
def test_chroot_stores_keep_their_files_elsewhere(value: str, real_dir: str) -> None:
    store = parse_local_store(value)
    assert store.uri == value.strip()
    assert store.real_store_dir == real_dir
    assert store.real_path(OUT) == f"{real_dir}/{OUT.basename}"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ssh://builder", "local store only"),
        ("https://cache.nixos.org", "local store only"),
        ("local?store=/gnu/store&root=/x", "/gnu/store"),
        ("local?root=relative", "absolute"),
        ("local://relative", "absolute"),
        ("local?real=relative", "absolute"),
    ],
)
def test_other_stores_are_refused_in_words(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_local_store(value)
    assert words in str(err.value)
    assert value in str(err.value)


@given(st.text())
def test_any_text_is_a_store_or_a_config_error(value: str) -> None:
    try:
        store = parse_local_store(value)
    except ConfigError:
        return
    assert store.real_store_dir.startswith("/")
