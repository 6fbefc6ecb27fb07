"""The store layer: Nix stores reached over a transport, and the filesystem side of NAR."""
