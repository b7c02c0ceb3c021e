# The two commands the README opens with: `make demo` and `make test`.
# Everything is built from nothing; the Python environment is cached outside
# the clone (see scripts/env.sh) and `.venv` points at it.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYO3_PYTHON := $(abspath $(PY))
# Property tests run at least this many cases per property.
export PROPTEST_CASES ?= 10000

.PHONY: env system-deps node-deps build demo test test-rust test-python bench lint clean docs wheel test-wheel

env:
	@bash scripts/env.sh

# Debian packages for the network-namespace and browser tests (those tests
# skip with a printed reason where they cannot run).
system-deps:
	@bash scripts/system-deps.sh || echo "system-deps: could not install; tests needing them will say so"

# The Solidity compiler, OpenZeppelin and anvil (contracts/), Chart.js (dashboard/).
node-deps:
	@cd contracts && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; }
	@cd dashboard && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; }

# Build the extension in release mode into the checkout's python/ tree.
build: env
	@$(VENV)/bin/maturin develop --release --quiet 2>&1 | grep -v '^📦\|^🔗\|^🐍\|^💻' || true
	@$(PY) -c "import hypergpu._core as c; print('built hypergpu._core', c.__version__)"

demo: build
	$(VENV)/bin/hypergpu demo

# The wheel users install (abi3, manylinux) into target/wheels.
wheel: env
	$(VENV)/bin/maturin build --release --out target/wheels

# Builds the wheel, installs it (base, then [all]) into a fresh venv from PyPI and
# trains outside the checkout (minutes and gigabytes; the last step of `make test`).
test-wheel: build
	$(PY) -m pytest -q -s -m wheel tests/test_packaging.py

# The documentation site (docs/, mkdocs.yml) into target/site; warnings are errors.
MKDOCS := PYTHONPATH=python NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
docs: build
	$(MKDOCS)

lint:
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings

test-rust:
	cargo test --profile test-checked

test-python: build
	$(PY) -m mypy.stubtest hypergpu._core --allowlist .stubtest-allowlist
	$(PY) -m mypy python/hypergpu
	PYTHONPATH=python $(VENV)/bin/lint-imports
	$(PY) scripts/sizes.py
	$(MKDOCS)
	$(PY) -m pytest -q -W error
	$(PY) -m pytest -q benches --benchmark-disable -p no:randomly

test: env system-deps node-deps lint test-rust test-python test-wheel

bench: build
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,mean,max,rounds

clean:
	rm -rf target python/hypergpu/*.so
