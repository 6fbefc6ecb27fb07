"""``nixdist build``: the whole derivation graph, scheduled over the builders by nixdist itself.

targets.py   what the user asked for: nix-instantiate's answer, or .drv paths; the .drv
             closure read from the local store
places.py    where each store path is valid (here, on which builders) and its path info
run.py       the run: ready derivations onto builders (the hook's picker), copies from
             wherever a path is, builds, failover; the outputs asked for brought here
console.py   what the user sees
"""
