"""Bytes through the client in one farm run (W6), read from the stores after the run.

Nothing here is timed; `measure` runs between a run's check and its clean-up
(`FarmBench.timed_run(measure=...)`), while the local store and every builder's store still
hold what the run left. Every size is a NAR size (``nix-store -q --size``, in the store that
holds the path), counted once per store a path went into:

received   the build's outputs valid in the local store afterwards. None was valid anywhere
           before (a fresh salt), so each one came in during the run.
sent       the paths a builder holds but did not build itself (Nix marks what a store built
           "ultimate") and that are valid in the local store: copied into that builder. Exact
           for the hooks, which upload from the local store only; for ``nixdist build`` an
           upper bound, since it may have relayed such a path from another builder instead
           (its history records upload bytes per build, not per source).
relayed    the paths a builder holds but did not build and that are not valid in the local
           store: they cannot have come from it, so they went from the builder that made them
           through the client process (``nixdist build``'s relay, a stream from one ssh session
           into another) to this one. Zero for the hooks.
asked      the closure of the outputs asked for (the outputs of the .drv paths given), and
sources    the build's sources not in it (the non-derivation paths of the .drv closure, valid
           here before the run): together, the least a client must receive and send.

Through the local store = received + sent: what the goal of issue 14 is about ("outputs that
only another builder needs are downloaded and uploaded again"). Over the client's network
links = received + sent + 2 x relayed: a relayed byte enters the client and leaves it again,
though it never touches the local store (its disk).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from farmbench import words

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from farmbench import FarmBench


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """One run's bytes, as the module's docstring defines them."""

    received: int
    sent: int
    relayed: int
    copies: int  # paths copied into builders (from anywhere)
    asked: int
    sources: int

    @property
    def through_store(self) -> int:
        return self.received + self.sent

    @property
    def over_links(self) -> int:
        return self.received + self.sent + 2 * self.relayed

    @property
    def least(self) -> int:
        """What a client must move at least: the outputs asked for and the sources."""
        return self.asked + self.sources

    def as_json(self) -> dict[str, int]:
        return {
            **asdict(self),
            "through_store": self.through_store,
            "over_links": self.over_links,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Traffic:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


def _sizes(numbers: Sequence[str], paths: Sequence[str]) -> dict[str, int]:
    """The words ``nix-store -q --size`` printed (one number a path, in the order of `paths`)."""
    sizes = [int(word) for word in numbers]
    if len(sizes) != len(paths):
        raise RuntimeError(f"nix-store -q --size: {len(sizes)} sizes for {len(paths)} paths")
    return dict(zip(paths, sizes, strict=True))


def local_sizes(bench: FarmBench, paths: Iterable[str]) -> dict[str, int]:
    """NAR sizes of `paths`, all valid in the client's store."""
    wanted = sorted(set(paths))
    if not wanted:
        return {}
    result = bench.run_nix(["nix-store", "-q", "--size", *wanted])
    return _sizes(words(result, "nix-store -q --size"), wanted)


def copied_into(bench: FarmBench, name: str, ours: set[str]) -> dict[str, int]:
    """Those of `ours` that builder `name` holds without having built them, with their sizes."""
    farm = bench.farm
    copied = sorted((set(farm.builder_store_paths(name)) - set(farm.built_paths(name))) & ours)
    if not copied:
        return {}
    result = farm.run_in(name, ["nix-store", "-q", "--size", *copied])
    return _sizes(result.stdout.decode().split(), copied)


def measure(bench: FarmBench, drvs: Sequence[str]) -> Traffic:
    """The traffic of the run that built `drvs` (see the module's docstring)."""
    closure = bench.closure(drvs)
    sources = {p for p in closure if not p.endswith(".drv")}
    outputs = set(bench.outputs([p for p in closure if p.endswith(".drv")]))
    here = set(bench.valid_paths(outputs))
    asked = set(bench.closure(bench.outputs(drvs)))
    size_here = local_sizes(bench, here | sources | asked)
    sent = relayed = copies = 0
    for name in bench.farm.names():
        for path, size in copied_into(bench, name, outputs | sources).items():
            copies += 1
            if path in here or path in sources:
                sent += size
            else:
                relayed += size
    return Traffic(
        received=sum(size_here[p] for p in here),
        sent=sent,
        relayed=relayed,
        copies=copies,
        asked=sum(size_here[p] for p in asked),
        sources=sum(size_here[p] for p in sources - asked),
    )
