#!/usr/bin/env bash
# The demo needs the build hook and the local farm (issue "nixdist-hook"); until they land it
# says so instead of pretending.
echo "make demo: the distributed build demo arrives with nixdist-hook and the local farm; not yet available" >&2
exit 1
