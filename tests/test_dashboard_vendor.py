"""The committed Chart.js build is the npm package's, at the locked version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboard"
VENDORED = ROOT / "python" / "hypergpu" / "api" / "static" / "vendor" / "chart.umd.js"


def locked_version() -> str:
    lock = json.loads((DASHBOARD / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/chart.js"]["version"])


def test_lock_pins_chart_js_4():
    assert locked_version().startswith("4.")
    assert json.loads((DASHBOARD / "package.json").read_text())["dependencies"]["chart.js"].startswith("^4")


def test_vendored_copy_is_the_locked_release():
    head = VENDORED.read_text()[:400]
    assert f"Chart.js v{locked_version()}" in head  # the UMD build's banner names its version


def test_vendored_copy_matches_node_modules():
    installed = DASHBOARD / "node_modules" / "chart.js"
    if not installed.is_dir():
        pytest.skip("dashboard/node_modules is absent; run `npm ci` in dashboard/ to compare with the package")
    assert json.loads((installed / "package.json").read_text())["version"] == locked_version()
    assert (installed / "dist" / "chart.umd.js").read_bytes() == VENDORED.read_bytes(), (
        "the committed chart.umd.js differs from node_modules: run `npm run vendor` in dashboard/"
    )
