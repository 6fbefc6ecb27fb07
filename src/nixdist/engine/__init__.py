"""``nixdist build``: the whole derivation graph, scheduled over the builders by nixdist itself.

driver.py     the steps in order, from the arguments to the exit status (start here)
targets.py    what the user asked for (nix-instantiate's answer, flake installables, .drv
              paths) and the .drv closure, read from the local store with our parser
substitutes.py what Nix would fetch rather than build, fetched here first
places.py     where each store path is valid (here, on which builders) and its path info
estimates.py  each build's expected time, from the history (the critical path's weights)
run.py        the run: ready derivations onto builders (the hook's picker) or here,
              failover, Ctrl-C
sessions.py   the run's store sessions, reused from build to build
copies.py     each path from where it is to where it is needed (relayed builder to builder)
buildlog.py   each build's log into Nix's log store
local.py      a build this host runs itself (what no builder can take)
nixcmd.py     the local Nix's commands, run one way
results.py    the outputs asked for brought here, rooted and printed as nix-build does
console.py    what the user sees: a live board on a terminal, lines elsewhere
"""
