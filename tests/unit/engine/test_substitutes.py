"""What Nix's --dry-run says it would fetch (the wording of Nix 2.8 and of 2.34's printMissing)."""

from __future__ import annotations

import pytest

from nixdist.engine.substitutes import parse_dry_run
from nixdist.errors import ParseError

A = "/nix/store/c3n3c11adbghwi80a18f6vyq1kmi7zza-dag-top"
B = "/nix/store/1d9i0bxdzpwwgh5zj8ppw0xyg1ncs7c4-dag-0-0"
D = "/nix/store/k1mi5db5hxv4jd2j2aksxj91jfagki8p-dag-4-0.drv"

# Nix 2.8.0, `nix-store --realise --dry-run` (recorded on this farm)
NIX_2_8 = f"""this path will be fetched (0.00 MiB download, 0.00 MiB unpacked):
  {A}
"""
# Nix 2.34 (src/libmain/shared.cc printMissing: renderSize, builds first)
NIX_2_34 = f"""this derivation will be built:
  {D}
these 2 paths will be fetched (1.2 KiB download, 3.0 KiB unpacked):
  {B}
  {A}
"""


@pytest.mark.parametrize(("said", "fetched"), [(NIX_2_8, [A]), (NIX_2_34, [B, A]), ("", [])])
def test_the_paths_nix_would_fetch(said: str, fetched: list[str]) -> None:
    assert parse_dry_run(said) == fetched


def test_warnings_around_the_lists_are_not_paths() -> None:
    said = "warning: you did not specify '--add-root'\n" + NIX_2_34 + "warning: done\n"
    assert parse_dry_run(said) == [B, A]


def test_a_listed_line_that_is_not_a_store_path_is_an_error() -> None:
    with pytest.raises(ParseError):
        parse_dry_run("these 2 paths will be fetched (1 KiB download):\n  /tmp/not-a-store-path\n")
