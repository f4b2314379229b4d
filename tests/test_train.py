"""The whole training entry point on the built-in tiny model: records, adapters, reload, learning."""
import json

import pytest
import torch

from peftcompare.engine import data, evaluate, models
from peftcompare.service.store import Store
from pipeline_helpers import SAMPLES, run_in_process, tiny_spec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("home"))


@pytest.mark.parametrize("task", ["classification", "summarization"])
@pytest.mark.parametrize("method, capacity", [("lora", 4), ("prefix", 10), ("prompt", 10)])
def test_each_method_and_task_trains_and_is_recorded(store, task, method, capacity):
    spec = tiny_spec(task=task, method=method, capacity=capacity, num_train_epochs=2)
    run = run_in_process(store, spec)
    assert run["status"] == "completed" and run["error"] is None
    assert 0 < run["trainable_params"] < run["total_params"]
    metric = "f1" if task == "classification" else "rougeL"
    assert 0.0 <= run["metrics"][metric] <= 1.0
    assert [e["epoch"] for e in run["epochs"]] == [1, 2]
    assert run["train_runtime"] > 0 and run["train_samples_per_second"] > 0 and run["peak_memory_mb"] > 0
    assert run["versions"]["torch"] and run["versions"]["peft"] and len(run["data_fingerprint"]) == 16
    assert run["data_source"] == "sample" and run["fast_paths"]["dynamic_padding"]
    steps = store.steps(run["run_id"])
    assert len(steps) == run["total_steps"] > 0 and all(s["loss"] > 0 for s in steps)
    adir = store.adapter_path(run["run_id"])
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json", "README.md"):
        assert (adir / name).is_file(), name
    assert run["adapter_bytes"] == (adir / "adapter_model.safetensors").stat().st_size
    record = json.loads((adir / "run.json").read_text())
    assert record["spec"]["method"] == method and record["metrics"][metric] == run["metrics"][metric]
    assert not list(store.adapters_dir.glob(".tmp-*"))


@pytest.mark.parametrize("task, method", [("classification", "lora"), ("classification", "prompt"),
                                          ("summarization", "prefix")])
def test_reloaded_adapter_reproduces_its_metric_exactly(store, task, method):
    from peft import PeftModel

    spec = tiny_spec(task=task, method=method, capacity=8, num_train_epochs=2)
    run = run_in_process(store, spec)
    spec = run["spec"]
    # plain PEFT loading, as the model card says
    base = models.load_model(spec.model_name)
    model = PeftModel.from_pretrained(base.model, str(store.adapter_path(run["run_id"]))).eval()
    td = data.load_task_data(spec)
    feats = data.tokenized(spec, base.family, base.tokenizer, td.validation, False)
    precision, dtype = run["precision"], {"bf16": torch.bfloat16, "fp32": None}[run["precision"]]
    metrics = evaluate.evaluate(model, base.family, base.tokenizer, spec, td.validation, feats, td.label_words,
                                "cpu", dtype)
    for k, v in run["metrics"].items():
        if not k.startswith("_"):
            assert metrics[k] == v, k


def test_zero_shot_is_a_baseline_run(store):
    run = run_in_process(store, tiny_spec(method="zero_shot"))
    assert run["trainable_params"] == 0 and run["adapter_dir"] is None and run["total_params"] > 0
    assert run["metrics"]["eval_samples"] == 8


def test_lora_clearly_learns_the_sample_classification_data(store):
    """Evaluated on the data it trained on: a learner fits it, the untouched model is at chance."""
    train_file = str(SAMPLES / "sst2_train.jsonl")
    common = dict(train_samples=0, eval_samples=0, validation_file=train_file, per_device_train_batch_size=16)
    zero = run_in_process(store, tiny_spec(method="zero_shot", **common))
    lora = run_in_process(store, tiny_spec(method="lora", capacity=8, num_train_epochs=20, learning_rate=1e-2,
                                           **common))
    assert lora["metrics"]["accuracy"] >= 0.9
    assert lora["metrics"]["f1"] >= zero["metrics"]["f1"] + 0.3
    losses = [s["loss"] for s in store.steps(lora["run_id"])]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_best_epoch_is_kept(store):
    """The original protocol (selection on validation): the reported score is the best epoch's own
    (tests/test_selection.py covers the dev split)."""
    run = run_in_process(store, tiny_spec(method="lora", capacity=4, num_train_epochs=3, selection="validation"))
    best = max(run["epochs"], key=lambda e: e["f1"])
    assert run["metrics"]["f1"] == best["f1"]
    assert run["best_epoch"] == best["epoch"] and run["selection"]["on"] == "validation"
