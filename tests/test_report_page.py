"""The HTML report in a real headless browser (Debian's chromium, driven by playwright):
it loads offline with no console error, every chart draws its marks, a screenshot is saved."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import sync_playwright
from test_report import CONFIG, demo_events, ultra

from ultra.eventlog.store import EventLog



@pytest.fixture(scope="module")
def page_and_tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    with EventLog.open(tmp / "events.db") as log:
        log.append(demo_events())
    (tmp / "config.toml").write_text(CONFIG)
    ultra(tmp, "report", "--format", "html", "--output", str(tmp / "report.html"))
    tables = {t["name"]: t for t in json.loads(
        ultra(tmp, "report", "all", "--format", "json").stdout)["tables"]}
    return tmp, tables


def present(table: dict, kind: str = "rate", skip: tuple[str, ...] = ()) -> int:
    keys = [c["key"] for c in table["columns"] if c["kind"] == kind and c["key"] not in skip]
    return sum(row[k] is not None for row in table["rows"] for k in keys)


def test_the_page_loads_offline_and_every_chart_draws_its_marks(page_and_tables, chromium):
    tmp, tables = page_and_tables
    models = len(tables["overview"]["rows"])
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            def only_the_file(route):  # offline: anything but the file itself is refused
                requests.append(route.request.url)
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_the_file)
            page.goto((tmp / "report.html").as_uri())
            page.wait_for_function(
                "[...document.querySelectorAll('.js-plotly-plot')].filter(d => d._fullLayout)"
                ".length === 4", timeout=60_000)

            def count(selector: str) -> int:
                return page.locator(selector).count()

            assert count("#chart-success-by-model .barlayer .point") == models
            assert count("#chart-success-by-model .errorbar") == models
            heat = present(tables["prompt-types"]) + present(tables["flaws"], skip=("adaptability",))
            assert count("#chart-model-by-prompt-type .heatmaplayer text") == heat
            assert count("#chart-success-over-tool-reliability .scatterlayer .trace") == models
            assert count("#chart-success-over-tool-reliability .scatterlayer .point") == \
                present(tables["tool-reliability"])
            assert count("#chart-error-categories .barlayer .point") == present(tables["errors"])
            assert count("section table") == len(tables) == 9
            # the demo's tests are simulated: a banner says so, and every table
            assert page.locator("#simulated-banner").is_visible()
            assert "SIMULATED" in page.locator("#simulated-banner").inner_text()
            assert count("section p.simulated") == 9
            page.screenshot(path=str(tmp / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert requests == [(tmp / "report.html").as_uri()]
    assert (tmp / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp / "report.png").stat().st_size > 50_000
