#!/usr/bin/env bash
# Build the extension in release mode and drop it into this checkout's
# python/hypergpu/, without touching the shared environment (pytest puts
# python/ first on sys.path). `make build` does the full install instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYO3_PYTHON=${PYO3_PYTHON:-$(readlink -f .venv)/bin/python}
cargo build --release -p hypergpu-core --lib "$@"
cp target/release/lib_core.so python/hypergpu/_core.abi3.so
echo "dev-build: python/hypergpu/_core.abi3.so updated"
