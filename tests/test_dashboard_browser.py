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

#: Plots a language-model session (and a classifier's, left out: no shared axis) on a chart of its own.
LM_CHART_CHECK = """() => {
  document.body.append(Object.assign(document.createElement("canvas"), { id: "lm-check" }));
  const chart = lineChart("#lm-check", "");
  const runs = [
    { s: { id: 8, label: "baseline", task: "classification" }, points: [{ round: 1, test_accuracy: 0.9 }] },
    { s: { id: 9, label: "baseline", task: "lm" }, points: [{ round: 1, test_loss: 3.2, test_perplexity: 24.5 }] },
  ];
  plotHeldOut(chart, runs, "lm");
  const ds = chart.data.datasets[0];
  return {
    axis: chart.options.scales.y.title.text, legend: ds.label, datasets: chart.data.datasets.length,
    tooltip: heldOutTooltip({ raw: ds.data[0], parsed: { y: ds.data[0].y }, dataset: ds }),
    stat: heldOutView("lm").stat({ test_loss: 3.2, test_perplexity: 24.5 }),
    title: document.querySelector("#held-out-title").textContent,
  };
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


# Every wide table sits in a scroll box inside its card; scrolled to the end, its last column shows.
SCROLLING_TABLES_CHECK = """() => [...document.querySelectorAll('.scroll')].filter((b) => b.offsetParent).map((box) => {
  const card = box.closest('.panel').getBoundingClientRect();
  const inside = box.getBoundingClientRect().right <= card.right + 1;
  box.scrollLeft = box.scrollWidth;
  const last = [...box.querySelectorAll('th')].pop();
  const shown = last ? last.getBoundingClientRect().right <= box.getBoundingClientRect().right + 1 : true;
  return {inside, last_column_reachable: shown, overflows: box.scrollWidth > box.clientWidth};
})"""


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
        # the held configuration fills the form once its GET answers (after the WebSocket may be up)
        page.wait_for_function("() => document.querySelector(\"[name='nodes.count']\").value === '2'")

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
        # A classifier's held-out chart is accuracy.
        assert page.evaluate("() => Chart.getChart('accuracy-chart').options.scales.y.title.text") == "test accuracy"
        assert page.locator("#held-out-title").inner_text() == "Accuracy"
        assert page.locator("#network-map circle").count() == 3  # coordinator and two nodes
        page.locator("#node-grid .node").first.click()
        page.wait_for_selector("#node-detail canvas#latency-chart")
        assert "success rate" in page.locator("#node-detail").inner_text()
        # Each node's updates are scored by their effect on the held-out loss: on its card and its detail.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#node-grid .node .figures')]"
            ".every((f) => /effect -?[0-9]/.test(f.textContent))", timeout=60_000)
        page.wait_for_function(
            "() => / [1-9][0-9]* scored/.test(document.querySelector('#node-effect')?.textContent ?? '')",
            timeout=60_000)
        print("node cards:", page.locator("#node-grid .node .figures").all_inner_texts(),
              "detail effect:", page.locator("#node-effect").inner_text())
        # The run records contributions on the (embedded) chain by default.
        page.wait_for_function(
            "() => document.querySelector('#chain').textContent.includes('connected · block')", timeout=60_000)
        # At 1280 px the contributions table scrolls inside its card: no column is cut off or runs past it.
        page.wait_for_selector("#chain .scroll table", timeout=60_000)
        page.set_viewport_size({"width": 1280, "height": 1600})
        fit = page.evaluate(SCROLLING_TABLES_CHECK)
        print("tables at 1280 px:", fit)
        assert fit and all(t["inside"] and t["last_column_reachable"] for t in fit), fit

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
        # A language model's is held-out loss, perplexity in the tooltip: checked on a chart
        # of its own (a second run, of a language model, would take minutes).
        assert page.evaluate(LM_CHART_CHECK) == {
            "axis": "held-out loss (nats/token)", "legend": "baseline #9 held-out loss", "datasets": 1,
            "tooltip": "baseline #9 held-out loss: 3.200 (perplexity 24.5)", "stat": "3.200 · 24.5",
            "title": "Held-out loss",
        }
        page.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert outside == [], f"the dashboard tried to reach {outside}"
    assert errors == [], errors
