"""``nixdist-hook``: the process Nix starts as its ``build-hook``.

Stdlib only on this path: the hook is started once per accepted derivation, so its start-up
time is on every remote build's critical path.
"""

from nixdist.hook.main import main

__all__ = ["main"]
