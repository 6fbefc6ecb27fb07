"""nixdist: distributed Nix builds over SSH.

Layers, lowest first (a module imports only from layers below it):
model, wire, protocol (pure) -> transport -> store -> scheduler -> state -> hook, cli, web, farm.
"""

__version__ = "0.1.0.dev0"
