# memexpose developer and CI entry points (GNU make).
# `make test` is the full suite CI runs (.ci/run); `make test-fast` skips slow and QEMU tests.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: venv qemu test test-fast lint demo bench firmware clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml src/memexpose/link/_hotpath.c
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 found; set PYTHON=..." >&2; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -e '.[dev]'
	touch $@

qemu:
	bash scripts/install-qemu.sh

test: venv qemu
	$(VPY) -m pytest tests

test-fast: venv
	$(VPY) -m pytest tests -m "not slow and not qemu"

lint: venv
	$(VENV)/bin/ruff check src tests

demo: venv
	$(VENV)/bin/memexpose demo

bench: venv
	$(VENV)/bin/memexpose bench --all --table

# Rebuild the guest programs with Debian's binutils (the built images are committed).
firmware:
	$(MAKE) -C firmware

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
	rm -f bench-results.json bench-results.md
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
	find src -name '*.so' -delete  # the built C hot path (pip install builds it again)
