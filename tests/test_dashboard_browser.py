"""The dashboard in a real headless Chromium during a real two-node run."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

from hypergpu.api.background import BackgroundApi
from hypergpu.config import load_config

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_dashboard_follows_and_stops_a_run(browser, tmp_path):
    # one real run watched in one browser page: a run per check would take minutes
    cfg = load_config(None, [
        "nodes.count=2", "training.rounds=1000", "training.model='mlp'", "training.local_steps=4",
        "data.cache_dir=null", "coordinator.checkpoint_every=0", f"coordinator.checkpoint_dir='{tmp_path / 'c'}'",
    ])
    with BackgroundApi(cfg, presets_dir=tmp_path / "presets") as api:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        errors: list[str] = []
        outside: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def only_local(route):  # the dashboard must work offline: no CDN, nothing remote
            host = urlparse(route.request.url).hostname
            if host not in ("127.0.0.1", "localhost"):
                outside.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", only_local)
        page.goto(f"{api.url}/#token={api.token}")
        page.wait_for_function("() => document.querySelector('#ws-status').classList.contains('on')")
        assert page.locator("#state").inner_text() == "idle"
        assert "token" not in page.url  # taken out of the address bar at once
        assert page.locator("[name='nodes.count']").input_value() == "2"

        # Invalid form input is refused in the page, naming the field.
        page.fill("[name='training.rounds']", "0")
        page.click("#start-btn")
        assert "training.rounds" in page.locator("#form-error").inner_text()
        page.fill("[name='training.rounds']", "1000")

        page.click("#start-btn")
        page.wait_for_function("() => document.querySelector('#state').textContent === 'running'", timeout=60_000)
        # Charts and the node grid fill in as rounds finish.
        page.wait_for_function("() => Number(document.querySelector('#round').textContent) >= 3", timeout=120_000)
        page.wait_for_function(
            "() => Chart.getChart('accuracy-chart').data.datasets[0].data.length >= 2", timeout=30_000)
        page.wait_for_selector("#node-grid .node.active >> nth=1", timeout=30_000)
        assert page.locator("#node-grid .node").count() == 2
        points_before = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[0].data.length")
        assert points_before >= 2
        page.wait_for_function(
            f"() => Chart.getChart('loss-chart').data.datasets[0].data.length > {points_before}", timeout=60_000)
        assert float(page.locator("#accuracy").inner_text().rstrip("%")) > 10
        assert page.locator("#network-map circle").count() == 3  # coordinator and two nodes
        page.locator("#node-grid .node").first.click()
        page.wait_for_selector("#node-detail canvas#latency-chart")
        assert "success rate" in page.locator("#node-detail").inner_text()
        # The run records contributions on the (embedded) chain by default.
        page.wait_for_function(
            "() => document.querySelector('#chain').textContent.includes('connected · block')", timeout=60_000)

        page.click("#stop-btn")
        page.wait_for_function("() => document.querySelector('#state').textContent === 'stopped'", timeout=60_000)
        assert api.service.current.state == "stopped"
        stopped_at = int(page.locator("#round").inner_text())
        assert stopped_at < 1000
        page.wait_for_timeout(500)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot: {shot} (stopped at round {stopped_at})")
        if os.environ.get("HYPERGPU_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["HYPERGPU_KEEP_SCREENSHOT"])
        page.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert outside == [], f"the dashboard tried to reach {outside}"
    assert errors == [], errors
