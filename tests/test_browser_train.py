"""The Train page in a real browser (headless Chromium), with a real training run: the live loss chart has
room for its y axis and follows the falling loss, a retried run's card follows it to "completed" without a
reload, the Dataset box follows the task; and a server started with the repository's own config, its store
inside the repository, never overflows inotify while thousands of files are written there."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from conftest import REPO, stop_processes, wait_for
from peftcompare.service import jobs
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store
from test_browser import CHROMIUM, SHOTS, free_port, goto_page, launch, start_app, stop_app

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

LONG = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=180, eval_samples=8,
               num_train_epochs=200, per_device_train_batch_size=4, learning_rate=1e-2)
QUICK = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=32, eval_samples=8,
                num_train_epochs=1, per_device_train_batch_size=8, seed=5)
LINE = (0x4C, 0x78, 0xA8)  # curves.PALETTE[0], the colour of a single run's loss line


def line_rows(png: bytes) -> tuple[int, int, int]:
    """(first, last) pixel rows holding the loss line's colour, and the image height."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    px = img.load()
    rows = [y for y in range(h) if any(sum(abs(a - b) for a, b in zip(px[x, y], LINE)) < 40 for x in range(w))]
    return (rows[0], rows[-1], h) if rows else (0, 0, h)


def test_live_loss_chart_retry_and_dataset_in_chromium(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    home.mkdir()
    store = Store(home)
    failed = store.create_run(QUICK, status="queued")
    store.transition(failed, "failed", ("queued",), finished_at=time.time(),
                     error="the training process exited with status 1 without finishing")
    (long_id,) = jobs.submit(store, [LONG]).run_ids
    jobs.ensure_worker(store)
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_app(home, port)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("heading", name="peftcompare", level=1).wait_for()
            goto_page(page, "Train")

            # 1. the live loss chart of the running run: the falling loss spans the plot, under a y axis
            wait_for(lambda: len(store.steps(long_id)) > 40, timeout=120, what="40 training steps")
            losses = [s["loss"] for s in store.steps(long_id)]
            assert losses[0] - min(losses) > 3, losses[:5]  # 7.6 -> below 4: something to draw
            chart = page.get_by_test_id("stVegaLiteChart").first  # the running run's card has the only chart
            expect(chart).to_be_visible(timeout=30_000)
            page.wait_for_timeout(2500)  # one refresh of the queue with the newest steps
            png = chart.screenshot(path=str(SHOTS / "train_live_loss.png"))
            top, bottom, height = line_rows(png)
            # 180 px of plot: a falling loss uses most of it (it was a flat line, 1-2 px, with no y axis)
            assert bottom - top > 100 and height > 180, (top, bottom, height)
            page.screenshot(path=str(SHOTS / "train_live_run.png"), full_page=True)

            # 2. cancel from the card, then retry the failed run: its card follows it without a reload
            cancel = page.locator(f".st-key-tr_cancel_{long_id} button")
            expect(cancel).to_have_count(1, timeout=30_000)
            cancel.click()
            wait_for(lambda: store.get(long_id)["status"] == "cancelled", timeout=30, what="the cancel")
            cancelled_row = page.locator(".stMarkdown").filter(has_text=long_id[-6:]).filter(has_text="cancelled")
            expect(cancelled_row.first).to_be_visible(timeout=30_000)
            retry = page.locator(f".st-key-tr_retry_{failed} button")
            expect(retry).to_have_count(1, timeout=30_000)  # while the list re-renders, a stale copy may linger
            retry.click()
            expect(page.get_by_text("Queued again as", exact=False)).to_be_visible(timeout=30_000)
            new = wait_for(lambda: [r for r in store.list_runs() if r["run_id"] not in (failed, long_id)],
                           timeout=30, what="the retried run's record")[0]["run_id"]
            wait_for(lambda: store.get(new)["status"] == "completed", timeout=180, what="the retried run to finish")
            done_row = page.locator(".stMarkdown").filter(has_text=new[-6:]).filter(has_text="completed")
            expect(done_row.first).to_be_visible(timeout=30_000)  # no reload: the queue refreshed itself
            expect(page.get_by_text("Queued:", exact=False)).to_have_count(0)
            expect(page.get_by_text("Nothing is running or waiting.")).to_be_visible()
            expect(page.get_by_role("button", name="Enqueue")).to_be_visible()  # the full rerun has ended
            expect(page.locator(".st-key-tr_retry_" + new)).to_have_count(0)  # completed: nothing to retry
            page.screenshot(path=str(SHOTS / "train_retry_done.png"), full_page=True)

            # 3. Task -> summarization: the Dataset box shows summarization's default, not sst2's
            page.get_by_test_id("stSelectbox").filter(has_text="Task").click()
            page.get_by_role("option", name="summarization").click()
            dataset = page.get_by_role("combobox", name="Dataset")
            expect(dataset).to_have_value("samsum (task default)", timeout=30_000)  # was "sst2 (task default)"
            dataset.click()  # and the choices are summarization's
            expect(page.get_by_role("option", name="dialogsum", exact=False)).to_be_visible()
            expect(page.get_by_role("option", name="sst2", exact=False)).to_have_count(0)
            page.keyboard.press("Escape")
            page.get_by_test_id("stSelectbox").filter(has_text="Dataset").screenshot(
                path=str(SHOTS / "train_dataset_after_task.png"))
            browser.close()
    finally:
        store.request_cancel(long_id)
        stop_app(proc)
        stop_processes(home)
    log = (home / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "fragment rerun was triggered with a callback" not in log, log[-3000:]


def test_server_with_the_repo_config_watches_no_store_venv_or_cache():
    """`streamlit run app.py` as `make app` starts it (the repository's .streamlit/config.toml, no watcher
    flag), with the store home inside the repository, while 20,000 files are written into the store."""
    from playwright.sync_api import sync_playwright

    effective = subprocess.run(
        [sys.executable, "-c", "from streamlit import config; config.get_config_options(force_reparse=True); "
         "print(config.get_option('server.fileWatcherType'), config.get_option('server.folderWatchBlacklist'))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert effective.startswith("poll ") and "results" in effective and ".venv" in effective, effective
    home = REPO / "artifacts" / f"watch-test-{uuid.uuid4().hex[:8]}"  # gitignored, inside the repository
    home.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "PEFTCOMPARE_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PEFTCOMPARE_PUBLIC", None)
    log_path = home / "streamlit.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=REPO, env=env, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=60, what="streamlit to answer its health check", interval=0.2)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}")  # a session: the source watcher starts with it
            page.get_by_role("heading", name="peftcompare", level=1).wait_for()
            goto_page(page, "Train")
            for d in range(100):  # what a sweep leaves behind: adapters, logs, caches
                for sub in ("results/cache", "adapters"):
                    folder = home / sub / f"d{d}"
                    folder.mkdir(parents=True)
                    for i in range(100):
                        (folder / f"f{i}.json").write_text("{}")
            time.sleep(3)
            for title in ("Adapters", "Train"):  # the pages still work
                goto_page(page, title)
            browser.close()
    finally:
        stop_app(proc)
        stop_processes(home)
        log = log_path.read_text()
        shutil.rmtree(home, ignore_errors=True)
    assert "Inotify" not in log and "inotify" not in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
