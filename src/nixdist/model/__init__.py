"""The pure Nix data model: store paths, nix-base32, hashes, path info, derivations, machines.

Nothing here does I/O.
"""
