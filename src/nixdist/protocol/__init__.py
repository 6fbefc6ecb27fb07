"""Pure message codecs for the protocols nixdist speaks with Nix.

* `hook` — Nix ⇄ build hook: settings block, ``try`` requests, ``# accept`` … replies, the
  input and output sets after accept, and how Nix reads the hook's stderr.
* `serve` — ``nix-store --serve``: magic, versions and handshake, plus the blocks shared by
  commands (BuildOptions, BasicDerivation, BuildResult); `serve_messages` — commands 1-9.
* `logjson` — ``@nix {json}`` log lines.

Nothing here does I/O: encoders return bytes; decoders take a `nixdist.wire.primitives.Reader`
and consume exactly one message, so ``maybe_decode(decoder, buffer)`` drives them from a
growing buffer.
"""
