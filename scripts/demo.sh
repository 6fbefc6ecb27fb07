#!/usr/bin/env bash
# `make demo`: a real nix-build of examples/demo.nix (34 derivations) through nixdist-hook on a
# local farm of three builders (sshd + own Nix store each), then a table of which builder built
# what, checked against the builders' own stores. Needs root on Linux; `make setup` first.
#
# The farm lives in $DEMO_FARM_DIR (default /var/lib/nixdist/demo-farm, ssh aliases demo-b1..3)
# and is LEFT RUNNING so the next run is fast; DEMO_KEEP_FARM=0 stops it at the end instead.
# Stop it later with: .venv/bin/nixdist farm down --dir /var/lib/nixdist/demo-farm
# DEMO_WORK: seconds each derivation sleeps (0.5); DEMO_POLL_INTERVAL: Nix's build-poll-interval
# (5, as in Nix); DEMO_NIX (`make demo NIX=2.34`): run the client side as a farm client of that
# Nix (2.8, 2.26, 2.34; default the host's). Ends with `nixdist status` and a dashboard left
# running on 127.0.0.1:8421.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/demo.py "$@"
