# nixdist: `make demo` and `make test` work on a fresh Debian 12 or 13 machine, as root.
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint unit rootfs demo bench vectors worker-vectors clean

setup:
	@scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest -q -m 'not integration'

test: lint rootfs
	$(PY) -m pytest -q

# The Debian root filesystems of the Nix versions the farm tests pair (2.8, 2.26, 2.34): built
# side by side once (~3 min), then cached in /var/cache/nixdist/rootfs. Root only, like the farm.
rootfs: setup
	@if [ "$$(id -u)" = 0 ]; then $(VENV)/bin/nixdist farm rootfs --nix 2.8 --nix 2.26 --nix 2.34; fi

# `make demo NIX=2.34`: the demo's client (instantiate, nix-build, queries) is a farm client of
# that Nix (2.8, 2.26, 2.34); default: the host's Nix.
demo: setup
	@$(if $(NIX),DEMO_NIX='$(NIX)' )scripts/demo.sh

# `make bench CLIENT_NIX=2.34`: W1-W3 as a client of that Nix, against its own hook;
# BENCH_ARGS: more arguments for bench/run.py (e.g. '--only w1,w2 --rounds 5').
bench: setup
	$(PY) bench/run.py $(if $(CLIENT_NIX),--client-nix '$(CLIENT_NIX)') $(BENCH_ARGS)

# Re-record the golden vectors from the Nix installed on this machine; worker-vectors: the
# nix-daemon --stdio sessions of Nix 2.8 and 2.34 (a farm with those builders, their own hooks).
vectors: setup
	$(PY) tests/record_vectors.py

worker-vectors: setup rootfs
	$(PY) tests/record_worker_vectors.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
