"""A real browser end to end: `streamlit run app.py` on a free port, headless Chromium through
Train -> Curves (the lesson) -> Adapters -> Compare (both modes) -> Curves -> Presets with the offline
defaults, screenshots under artifacts/screenshots/."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, stop_processes, wait_for
from peftcompare.service import procs
from peftcompare.service.store import Store

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SHOTS = REPO / "artifacts" / "screenshots"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, port: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PEFTCOMPARE_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    env.pop("PEFTCOMPARE_PUBLIC", None)
    log = open(home / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--browser.gatherUsageStats", "false",
                             "--server.fileWatcherType", "none"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited: {(home / 'streamlit.log').read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=60, what="streamlit to answer its health check", interval=0.2)
    return proc


def stop_app(proc: subprocess.Popen) -> None:
    procs.stop(proc)


@pytest.fixture
def server(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    proc = start_app(home, port)
    yield home, f"http://127.0.0.1:{port}"
    stop_app(proc)
    stop_processes(home)


def launch(p):
    return p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)


def goto_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=30_000)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)


def test_offline_defaults_teach_the_lesson_through_every_page_in_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    home, url = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    store = Store(home)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("heading", name="peftcompare", level=1).wait_for()
        expect(page.get_by_text("The store is empty")).to_be_visible()
        page.screenshot(path=str(SHOTS / "01_home_empty.png"), full_page=True)

        goto_page(page, "Train")
        expect(page.get_by_test_id("stMetric").filter(has_text="Trainable parameters")).to_contain_text("12,288",
                                                                                                         timeout=90_000)
        # the offline defaults as the form proposes them: nothing typed but a second capacity
        page.get_by_role("button", name="Enqueue").click()
        expect(page.get_by_text("Enqueued 1 run(s)")).to_be_visible()
        page.screenshot(path=str(SHOTS / "02_train_queue.png"), full_page=True)
        set_number(page, "Capacity (rank r)", 4)
        expect(page.get_by_test_id("stMetric").filter(has_text="Trainable parameters")).to_contain_text("6,144",
                                                                                                         timeout=90_000)
        page.get_by_role("button", name="Enqueue").click()
        # the queue refreshes itself: no reload, both runs turn "completed" on the page
        expect(page.get_by_text("completed", exact=True)).to_have_count(2, timeout=300_000)
        runs = store.list_runs()
        assert [r["status"] for r in runs] == ["completed", "completed"], [r.get("error") for r in runs]
        assert sorted(r["capacity"] for r in runs) == [4, 8]
        run = runs[0]
        page.screenshot(path=str(SHOTS / "03_train_done.png"), full_page=True)

        goto_page(page, "Adapters")
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
        page.get_by_text("Model card").click()
        expect(page.get_by_text("Trained by peftcompare run")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SHOTS / "04_adapters.png"), full_page=True)
        page.get_by_test_id("stMultiSelect").filter(has_text="Select adapters").click()
        for _ in range(2):  # both adapters: the menu stays open after a pick
            page.get_by_role("option").first.click()
            page.wait_for_timeout(300)
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Compare these").click()

        page.get_by_role("heading", name="Compare", level=1).wait_for()
        expect(page.get_by_test_id("stMultiSelect").filter(has_text="Adapters")).to_contain_text("LoRA 8")
        expect(page.get_by_test_id("stMultiSelect").filter(has_text="Adapters")).to_contain_text("LoRA 4")
        page.get_by_label("Text", exact=True).fill("a warm, funny and beautifully acted film")
        page.keyboard.press("Control+Enter")
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("zero-shot", exact=True)).to_be_visible(timeout=90_000)
        expect(page.get_by_text("latency").first).to_be_visible()
        expect(page.get_by_text("latency")).to_have_count(3)  # zero-shot + two adapters, side by side
        page.screenshot(path=str(SHOTS / "05_compare.png"), full_page=True)
        # the second mode: the same columns over the validation set, and where they disagree
        page.get_by_test_id("stRadio").filter(has_text="Mode").get_by_text("Across the validation set").click()
        page.get_by_role("button", name="Find disagreements").click()
        expect(page.get_by_role("button", name="Download CSV")).to_be_visible(timeout=120_000)
        page.screenshot(path=str(SHOTS / "05b_compare_across.png"), full_page=True)

        # the lesson: the Curves page offers the missing zero-shot baseline, and both adapters beat it
        goto_page(page, "Curves")
        page.get_by_role("button", name="Add the zero-shot baseline").click()
        wait_for(lambda: any(r["method"] == "zero_shot" and r["status"] == "completed" for r in store.list_runs()),
                 timeout=180, what="the zero-shot baseline to finish")
        scores = {(r["method"], r["capacity"]): r["metrics"]["f1"] for r in store.list_runs()}
        zero = next(v for (m, _), v in scores.items() if m == "zero_shot")
        for cap in (4, 8):
            assert scores[("lora", cap)] >= zero + 0.2, (scores, "an adapter does not beat zero-shot by 0.2 F1")
        page.reload()
        page.get_by_role("heading", name="Curves", level=1).wait_for()
        expect(page.get_by_text("No zero-shot baseline")).to_have_count(0)
        chart = page.get_by_test_id("stVegaLiteChart").first
        expect(chart).to_be_visible()
        expect(chart.locator("canvas, svg").first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)  # the remaining charts and the table draw after the first
        for r in runs:  # both on the curve's table
            expect(page.get_by_text(r["run_id"]).first).to_be_attached()
        page.screenshot(path=str(SHOTS / "06_curves.png"), full_page=True)

        goto_page(page, "Presets")
        expect(page.get_by_role("button", name="Run ").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "07_presets.png"), full_page=True)
        browser.close()
    log = (home / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
