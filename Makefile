# nixdist: `make demo` and `make test` work on a fresh Debian 12 machine, as root.
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint unit rootfs demo bench vectors clean

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

demo: setup
	@scripts/demo.sh

bench: setup
	$(PY) bench/run.py

# Re-record the golden vectors from the Nix installed on this machine.
vectors: setup
	$(PY) tests/record_vectors.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
