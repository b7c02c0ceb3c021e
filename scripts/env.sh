#!/usr/bin/env bash
# Create (or reuse) the Python environment for this checkout.
#
# The environment lives outside the clone, in $HYPERGPU_CACHE (default
# ~/.cache/hypergpu), keyed by a hash of the dependency lists in
# pyproject.toml, so a fresh clone reuses it and only a dependency change
# builds a new one. `.venv` in the checkout is a symlink to it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
CACHE=${HYPERGPU_CACHE:-$HOME/.cache/hypergpu}
KEY=$("$PY" - <<'PYEOF'
import hashlib, json, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
spec = {"deps": project["dependencies"], "extras": project["optional-dependencies"]}
print(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16])
PYEOF
)
VENV="$CACHE/venv-$KEY"

if [ ! -f "$VENV/.complete" ]; then
    echo "env: creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # Install every dependency of the project (runtime + dev extras) without
    # the project itself; the extension is built from this checkout below.
    "$PY" - <<'PYEOF' > "$CACHE/requirements-$KEY.txt"
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(p["dependencies"])
for name, extra in p["optional-dependencies"].items():
    deps += [d for d in extra if not d.startswith("hypergpu")]
print("\n".join(deps))
PYEOF
    "$VENV/bin/pip" install --quiet -r "$CACHE/requirements-$KEY.txt"
    touch "$VENV/.complete"
else
    echo "env: reusing $VENV"
fi

# .venv in the checkout points at the cached environment.
if [ -L .venv ] || [ ! -e .venv ]; then
    ln -sfn "$VENV" .venv
fi
