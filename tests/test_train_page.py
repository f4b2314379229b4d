"""The Train page (AppTest) and the one enqueue policy behind it (jobs.submit): the Dataset box follows the
task, capacities per sweep method, capacity 0 and rank 1000 are said, an unavailable model turns Enqueue
off, and a retry of a spec that has completed meanwhile says so and queues nothing."""
from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from peftcompare.service import jobs
from peftcompare.core import methods
from peftcompare.core.spec import OFFLINE_RECIPE, RunSpec
from peftcompare.service.store import Store

QUICK = RunSpec(**{**OFFLINE_RECIPE, "model_name": "builtin:tiny-t5", "method": "lora", "capacity": 4,  # the form's
                   "train_samples": 16, "eval_samples": 8, "num_train_epochs": 1,  # offline recipe, a quick budget
                   "per_device_train_batch_size": 8, "seed": 7})


def train_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    return at


def record(store: Store, spec: RunSpec, status: str, **values) -> str:
    """A finished run record without training (the page only reads the store)."""
    run_id = store.create_run(spec, status="queued")
    assert store.transition(run_id, status, ("queued",), finished_at=time.time(), **values)
    return run_id


def shown(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "success", "warning", "error")
                     for e in getattr(at, kind))


def test_dataset_box_follows_the_task(app_home):
    at = train_page()
    box = at.selectbox(key="tr_dataset")
    assert box.value == "" and box.options[0] == "sst2 (task default)"
    at.selectbox(key="tr_task").set_value("summarization").run()
    box = at.selectbox(key="tr_dataset")
    assert box.options[0] == "samsum (task default)" and box.value == ""
    # the script sends the value with the new label: without it the browser kept "sst2 (task default)",
    # a choice no longer in the list (the box keeps its identity across tasks through its key)
    assert box.proto.set_value and box.proto.raw_value == "samsum (task default)"
    assert not [o for o in box.options if "sst2" in o]
    at.selectbox(key="tr_dataset").set_value("dialogsum").run()
    at.selectbox(key="tr_task").set_value("classification").run()  # dialogsum is no classification set
    assert at.selectbox(key="tr_dataset").value == "" and not at.error
    assert at.selectbox(key="tr_dataset").proto.raw_value == "sst2 (task default)"


def test_capacity_zero_and_a_huge_rank_are_said(app_home):
    at = train_page()
    at.number_input(key="tr_capacity").set_value(0).run()
    assert at.number_input(key="tr_capacity").value == 0  # kept as typed, not silently put back
    assert [e.value for e in at.error] == ["Capacity: rank r must be > 0, got 0"]
    assert at.button(key="tr_enqueue").disabled
    at.number_input(key="tr_capacity").set_value(1000).run()
    assert not at.error
    (warning,) = [w.value for w in at.warning]
    assert "77% of the model's parameters" in warning and "no longer parameter-efficient" in warning
    assert [m.value for m in at.metric if m.label == "Trainable parameters"] == ["1,536,000"]
    assert not at.button(key="tr_enqueue").disabled  # said, not forbidden
    at.number_input(key="tr_capacity").set_value(8).run()
    assert not at.warning  # 2.6 %: efficient, nothing to say
    at.selectbox(key="tr_method").set_value("full").run()
    assert any("Full fine-tuning trains all 100% of the parameters" in w.value for w in at.warning)


def test_unavailable_model_turns_enqueue_off_with_the_reason(app_home):
    from huggingface_hub import try_to_load_from_cache

    if try_to_load_from_cache("google/flan-t5-large", "config.json") is not None:
        pytest.skip("google/flan-t5-large is in this machine's Hub cache")
    at = train_page()
    at.selectbox(key="tr_model_name").set_value("google/flan-t5-large").run()
    assert not at.exception
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith("Model: google/flan-t5-large is not in the local cache and the Hugging Face Hub is "
                              "unreachable") and "model_name" not in warning
    assert at.button(key="tr_enqueue").disabled
    assert any("Enqueue is off: the model cannot be used" in c.value for c in at.caption)
    at.selectbox(key="tr_model_name").set_value("builtin:tiny-t5").run()
    assert not at.button(key="tr_enqueue").disabled and not at.warning
    assert Store(app_home).list_runs() == []


def test_sweep_capacities_per_method(app_home):
    at = train_page()
    at.radio(key="tr_mode").set_value("Sweep grid").run()
    # each chosen method with a knob has its own box, prefilled from its reference grid
    for name in ("lora", "prompt"):
        box = at.text_input(key=f"tr_sweep_caps_{name}")
        assert box.value == ", ".join(map(str, methods.METHODS[name].capacities))
        assert box.label.startswith(methods.METHODS[name].title)
    at.text_input(key="tr_sweep_caps_lora").input("4, 8")
    at.text_input(key="tr_sweep_caps_prompt").input("10").run()
    assert not at.error, [e.value for e in at.error]
    # zero-shot + LoRA 4, 8 + prompt tuning 10
    assert any("**4 runs** in the grid" in m.value for m in at.markdown)
    counts = at.dataframe[0].value
    assert list(zip(counts["method"], counts["capacity"])) == [("LoRA", 4), ("LoRA", 8), ("Prompt-Tuning", 10)]
    at.multiselect(key="tr_sweep_methods").set_value(["lora", "prompt", "ia3"]).run()
    assert [t.key for t in at.text_input if t.key.startswith("tr_sweep_caps_")] == ["tr_sweep_caps_lora",
                                                                                     "tr_sweep_caps_prompt"]
    assert any("IA³: no capacity knob" in c.value for c in at.caption)
    at.text_input(key="tr_sweep_caps_prompt").input("10, 0").run()
    assert [e.value for e in at.error] == ["Capacities for Prompt-Tuning: virtual tokens must be at least 1, got 0"]
    assert at.button(key="tr_enqueue").disabled
    at.text_input(key="tr_sweep_caps_prompt").input("").run()
    assert [e.value for e in at.error] == ["Capacities for Prompt-Tuning: give at least one virtual tokens"]


def test_train_together_queues_the_grid_in_packs(app_home, monkeypatch):
    """The sweep form's "Train together": the runs that can pack share a pack id in the queue (the worker then
    trains them in one process); the others are marked to train alone."""
    monkeypatch.setattr(jobs, "ensure_worker", lambda store: False)  # the queue is read, not run
    at = train_page()
    at.radio(key="tr_mode").set_value("Sweep grid").run()
    at.multiselect(key="tr_sweep_methods").set_value(["lora", "ia3"]).run()
    at.text_input(key="tr_sweep_caps_lora").input("4, 8").run()
    at.checkbox(key="tr_sweep_zero_shot").uncheck().run()
    at.toggle(key="tr_sweep_pack").set_value(True).run()
    at.button(key="tr_enqueue").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    queued = {(r["method"], r["capacity"]): r for r in Store(app_home).list_runs(status=("queued",))}
    assert set(queued) == {("lora", 4), ("lora", 8), ("ia3", 0)}
    assert queued[("lora", 4)]["pack_id"] == queued[("lora", 8)]["pack_id"] not in (None, "alone")
    assert queued[("ia3", 0)]["pack_id"] == "alone"


def test_retry_of_a_spec_completed_meanwhile_says_so_and_queues_nothing(app_home, monkeypatch):
    store = Store(app_home)
    failed = record(store, QUICK, "failed", error="the training process exited with status 1 without finishing")
    done = record(store, QUICK, "completed")
    monkeypatch.setattr(jobs, "ensure_worker", lambda s: False)  # nothing trains in this test
    at = train_page()
    at.button(key=f"tr_retry_{failed}").click().run()
    assert not at.exception
    assert [r["run_id"] for r in store.list_runs()] == [failed, done]
    assert any(i.value.startswith("Not queued: an identical run is already completed") and done in i.value
               for i in at.info), shown(at)
    # the form's twin of a stored run: Enqueue is off and says why
    for key, value in (("tr_train_samples", 16), ("tr_eval_samples", 8), ("tr_num_train_epochs", 1),
                       ("tr_capacity", 4), ("tr_seed", 7), ("tr_learning_rate", QUICK.learning_rate),
                       ("tr_per_device_train_batch_size", 8)):
        at.number_input(key=key).set_value(value)
    at.run()
    assert at.button(key="tr_enqueue").disabled
    assert any(f"Enqueue is off: an identical run is already completed ({done})" in c.value for c in at.caption)


def test_retry_queues_again_and_the_queue_goes_live(app_home, monkeypatch):
    store = Store(app_home)
    failed = record(store, QUICK.replace(seed=3), "interrupted", error="the training process disappeared")
    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda s: started.append(1) or True)
    at = train_page()
    assert at.session_state["tr_queue_live"] is False  # nothing active: the queue does not refresh itself
    at.button(key=f"tr_retry_{failed}").click().run()
    assert not at.exception
    (new,) = [r for r in store.list_runs() if r["run_id"] != failed]
    assert new["status"] == "queued" and new["spec"] == store.get(failed)["spec"] and started
    assert any(s.value == f"Queued again as {new['run_id']}." for s in at.success), shown(at)
    # the page ran whole after the callback: the queue refreshes itself now, and the card says what it waits for
    assert at.session_state["tr_queue_live"] is True
    assert "Queued: the worker is starting it" in shown(at)


def test_submit_is_the_one_enqueue_policy(tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    store = Store(tmp_path)
    a, b = QUICK, QUICK.replace(seed=8)
    first = jobs.submit(store, [a, b, a])  # a twin inside the list is queued once
    assert len(first.run_ids) == 2 and first.skipped == [] and first.total == 2
    again = jobs.submit(store, [a, QUICK.replace(seed=9)])
    assert len(again.run_ids) == 1 and [twin["run_id"] for _, twin in again.skipped] == [first.run_ids[0]]
    # a bad data file anywhere in the grid: nothing of it is queued
    bad = QUICK.replace(seed=10, train_file=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="train_file"):
        jobs.submit(store, [QUICK.replace(seed=11), bad])
    assert len(store.list_runs()) == 3
    with pytest.raises(ValueError, match="is still queued"):
        jobs.retry(store, first.run_ids[0])
    store.request_cancel(first.run_ids[1])
    assert jobs.retry(store, first.run_ids[1]).run_ids  # cancelled, no twin: queued again
    # public: every spec's limits and the visitor's quota for the whole grid, before any record
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    before = len(store.list_runs())
    with pytest.raises(ValueError, match="2 runs exceed this public instance's limit of 1"):
        jobs.submit(store, [QUICK.replace(seed=12), QUICK.replace(seed=13)], owner="v")
    with pytest.raises(ValueError, match="train_samples: at most"):
        jobs.submit(store, [QUICK.replace(seed=14, train_samples=5000)], owner="v")
    assert len(store.list_runs()) == before
