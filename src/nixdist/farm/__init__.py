"""The local farm: this Linux machine as N Nix builder hosts (design.md §8).

Each builder is a real ``sshd`` on a loopback port, running in a mount namespace of its own
with its own ``/nix`` (an empty store), ``/etc/nix`` (its ``system``, ``extra-platforms``,
``system-features``, ``max-jobs``, ``/etc/nix/nixdist-builder`` holding its name and
``/etc/nix/nixdist-speed`` its speed factor), its own ``/etc/ssh``, ``/root`` and ``/tmp``.
Clients log in as root with the farm's client key, and run the real
``nix-store --serve --write`` there, which sees only that builder's store.

The farm writes a Nix machines file and an ssh config include; use them as::

    NIX_SSHOPTS="-F <farm>/ssh_config" nix-build … --builders @<farm>/machines

Fault switches for the tests: `Farm.stop` / `Farm.start` (SIGKILL everything / start again
on the same port), `Farm.freeze` / `Farm.thaw` (SIGSTOP / SIGCONT every process), and
`Farm.set_noisy` (root's shell prints on stdout). `Farm.heal` undoes all of them.

A builder may run another Nix than the host's (``nix=2.8|2.26|2.34``,
`nixdist.farm.releases`): it is then chrooted in a Debian root filesystem of that version
(`nixdist.farm.rootfs`). `Farm.client_argv` runs a command as a client of a given Nix
(`nixdist.farm.client`).

The CLI (`nixdist farm …`, `nixdist.cli.farm`) and the integration tests both use `Farm`.
Builder specifications and the TOML farm file are described in `nixdist.farm.spec`, the files
a builder sees in `nixdist.farm.render`, the on-disk layout and lifecycle in
`nixdist.farm.farm`, how a builder's processes are started, found and entered in
`nixdist.farm.builders`.
"""

from __future__ import annotations

from nixdist.farm.builders import BuilderState, BuilderStatus
from nixdist.farm.errors import FarmError
from nixdist.farm.farm import DEFAULT_FARM_DIR, FARM_DIR_ENV, Farm, default_farm_dir
from nixdist.farm.spec import (
    DEFAULT_ALIAS_PREFIX,
    BuilderSpec,
    FarmConfig,
    combine_specs,
    load_farm_toml,
    make_spec,
    parse_builder_option,
    parse_farm_toml,
    plain_specs,
)
from nixdist.state.config import host_system

__all__ = [
    "DEFAULT_ALIAS_PREFIX",
    "DEFAULT_FARM_DIR",
    "FARM_DIR_ENV",
    "BuilderSpec",
    "BuilderState",
    "BuilderStatus",
    "Farm",
    "FarmConfig",
    "FarmError",
    "combine_specs",
    "default_farm_dir",
    "host_system",
    "load_farm_toml",
    "make_spec",
    "parse_builder_option",
    "parse_farm_toml",
    "plain_specs",
]
