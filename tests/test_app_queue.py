"""The Train page's queue: a running run cancelled from the page stops within seconds and is marked
cancelled; retry queues it again; a run whose process is gone shows as interrupted after a restart."""
from __future__ import annotations

import time

from streamlit.testing.v1 import AppTest

from conftest import APP, wait_for
from peftcompare.service import jobs
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store

LONG = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=180, eval_samples=8,
               num_train_epochs=200, per_device_train_batch_size=4)


def test_cancel_running_run_then_retry(app_home):
    store = Store(app_home)
    run_id = jobs.enqueue(store, LONG)
    jobs.ensure_worker(store)
    wait_for(lambda: (store.get(run_id).get("step") or 0) > 0, timeout=90, what="the run to start training")

    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    shown = [p for p in at.get("progress")]
    assert shown, "no progress bar for the running run"
    assert any(m.label == "Current loss" and m.value != "—" for m in at.metric)
    at.button(key=f"tr_cancel_{run_id}").click().run()
    assert not at.exception
    t0 = time.monotonic()
    run = wait_for(lambda: (r := store.get(run_id))["status"] != "running" and r, timeout=20,
                   what="the cancelled run to stop")
    assert run["status"] == "cancelled", run
    assert time.monotonic() - t0 < 15
    assert (run.get("step") or 0) < run["total_steps"]

    at.run()
    assert "cancelled" in "\n".join(m.value for m in at.markdown)
    at.button(key=f"tr_retry_{run_id}").click().run()
    assert not at.exception
    again = [r for r in store.list_runs() if r["run_id"] != run_id]
    assert len(again) == 1 and again[0]["spec"] == run["spec"] and again[0]["status"] in ("queued", "running")
    store.request_cancel(again[0]["run_id"])  # don't train 200 epochs in a test


def test_stale_running_run_becomes_interrupted(app_home):
    store = Store(app_home)
    run_id = store.create_run(LONG, status="running")
    store.update(run_id, pid=2**22 + 12345)  # no such process
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    assert store.get(run_id)["status"] == "interrupted"
    at.switch_page("pages/train.py").run()
    assert "interrupted" in "\n".join(m.value for m in at.markdown)
