"""Issue 12 in a real browser: the Curves page (front, colours, loss overlay), the Presets page following
its queue live with failed runs, retry and a Quick toggle that survives navigation, wrapped log lines.
Screenshots under artifacts/screenshots/ (12_*)."""
from __future__ import annotations

import time

import pytest

from conftest import stop_processes
from pipeline_helpers import run_in_process, tiny_spec
from peftcompare.service import analysis, presets
from peftcompare.service.store import Store
from test_browser import CHROMIUM, SHOTS, free_port, goto_page, launch, start_app, stop_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
LONG_LINE = "RuntimeError: " + "the tiny model ran out of patience while it was training " * 10
QUICK = "Quick (a few examples, one epoch, one capacity per method)"


@pytest.fixture
def seeded(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    store = Store(home)
    for kw in [dict(method="zero_shot"), dict(method="lora", capacity=4), dict(method="lora", capacity=8),
               dict(method="prompt", capacity=10), dict(method="ia3")]:
        run_in_process(store, tiny_spec(**kw))
    (bitfit,) = [s for s in presets.preset_specs("bert_sst2", offline=True, quick=True) if s.method == "bitfit"]
    failed = store.create_run(bitfit.resolved(), status="running")
    store.log_path(failed).write_text("loading builtin:tiny-bert ...\n" + LONG_LINE + "\n")
    store.transition(failed, "failed", ("running",), finished_at=time.time(),
                     error="the training process exited with status 1 without finishing")
    port = free_port()
    proc = start_app(home, port)
    yield store, f"http://127.0.0.1:{port}"
    stop_app(proc)
    stop_processes(home)


def test_curves_and_presets_in_chromium(seeded):
    from playwright.sync_api import expect, sync_playwright

    store, url = seeded
    SHOTS.mkdir(parents=True, exist_ok=True)
    agg = analysis.aggregate(analysis.load_df(store, task="classification"), "f1")
    front = analysis.pareto_front(agg)
    adapters_on_front = bool(front[agg["method"] != "zero_shot"].any())
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("heading", name="peftcompare", level=1).wait_for()

        # -- Curves: the front with zero-shot as a point, the loss overlay of every run ------------------------
        goto_page(page, "Curves")
        charts = page.get_by_test_id("stVegaLiteChart")
        expect(charts).to_have_count(2, timeout=30_000)
        expect(charts.nth(1).locator("canvas, svg").first).to_be_visible(timeout=30_000)
        if not adapters_on_front:  # zero-shot beats every adapter of these tiny runs: nothing is ringed
            expect(page.get_by_text("No adapter is on the Pareto front yet")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("One line per run in its method's colour")).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1000)  # let vega draw
        page.screenshot(path=str(SHOTS / "12_curves.png"), full_page=True)

        # -- Adapters: labelled table, a dash for missing values ------------------------------------------------
        goto_page(page, "Adapters")
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(800)
        page.screenshot(path=str(SHOTS / "12_adapters.png"), full_page=True)

        # -- Presets: the failure with its reason, a wrapped log, Quick kept across pages ------------------------
        goto_page(page, "Presets")
        page.get_by_text("BERT on SST-2", exact=True).first.click()
        reason = page.get_by_text("The training process exited with status 1 without finishing")
        expect(reason).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Retry")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("T5 has no bias terms")).to_have_count(0)  # no T5 note on the BERT preset
        page.get_by_text("Log", exact=True).click()
        code = page.get_by_test_id("stCode").filter(has_text="ran out of patience").first
        expect(code).to_be_visible(timeout=30_000)
        # wrapped: the long line breaks into several lines inside the block instead of running off its edge
        box = code.evaluate("""el => { const c = el.querySelector('code') || el, p = el.querySelector('pre') || el;
            return {ws: getComputedStyle(c).whiteSpace, fits: p.scrollWidth <= p.clientWidth + 1,
                    lines: c.getBoundingClientRect().height / parseFloat(getComputedStyle(c).lineHeight)}; }""")
        assert box["ws"] in ("pre-wrap", "break-spaces") and box["fits"] and box["lines"] > 3, box
        page.wait_for_timeout(800)  # the expander's opening animation
        page.screenshot(path=str(SHOTS / "12_presets_failed.png"), full_page=True)

        page.get_by_text(QUICK).click()
        expect(page.get_by_role("button", name="Run BERT on SST-2 (4 runs)")).to_be_visible(timeout=30_000)
        goto_page(page, "Curves")
        goto_page(page, "Presets")
        expect(page.get_by_role("button", name="Run BERT on SST-2 (4 runs)")).to_be_visible(timeout=30_000)
        assert page.get_by_label(QUICK).is_checked()

        # -- Run: the page follows the queue by itself and shows the results, no reload -------------------------
        page.get_by_role("button", name="Run BERT on SST-2 (4 runs)").click()
        # the preflight loads the training stack in the app's process the first time: give it time
        expect(page.get_by_text("4 runs queued, 0 already stored or queued.")).to_be_visible(timeout=120_000)
        expect(page.get_by_text("of this preset's runs are queued or running")).to_be_visible(timeout=30_000)
        page.mouse.move(5, 5)  # no button tooltip over the page in the screenshots
        page.screenshot(path=str(SHOTS / "12_presets_running.png"), full_page=True)
        expect(page.get_by_text("of this preset's runs are queued or running")).to_have_count(0, timeout=300_000)
        runs = presets.preset_runs(store, "bert_sst2")
        assert sorted(r["status"] for r in runs) == ["completed"] * 4 + ["failed"], [r.get("error") for r in runs]
        expect(page.get_by_text("builtin:tiny-bert · sst2")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("No completed runs of this preset yet")).to_have_count(0)
        expect(page.get_by_role("button", name="Retry")).to_have_count(0)  # the retried BitFit succeeded
        expect(page.get_by_text("4 runs queued, 0 already stored or queued.")).to_have_count(0)  # old news
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "12_presets_done.png"), full_page=True)
        browser.close()
    log = (store.home / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
