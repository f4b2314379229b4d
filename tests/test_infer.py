"""The Compare engine against each adapter evaluated alone, on real adapters trained on builtin:tiny-t5."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from peftcompare.engine import adapters
from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import compare as infer
from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.service import execution
from peftcompare.service.store import Store

TEXT = "a warm , funny and surprisingly moving film"
DIALOGUE = "Anna: are we still on for lunch?\nBen: yes, 12:30 at the usual place.\nAnna: great, see you!"
CLASSIFY = [("lora", 4, 1), ("lora", 8, 2), ("prompt", 4, 1), ("prompt", 6, 2), ("ptuning", 4, 1),
            ("prefix", 4, 1), ("ia3", 0, 1), ("adalora", 4, 1), ("full", 0, 1), ("last_layers", 1, 1),
            ("bitfit", 0, 1), ("prefix_full", 4, 1)]
SUMMARIZE = [("lora", 4, 1), ("lora", 8, 2), ("prompt", 4, 1), ("ptuning", 6, 1)]


def _train(store, task, method, capacity, seed):
    extra = {"max_target_length": 12} if task == "summarization" else {}
    spec = RunSpec(task=task, model_name="builtin:tiny-t5", method=method, capacity=capacity or 8, seed=seed,
                   train_samples=8, eval_samples=2, num_train_epochs=2, per_device_train_batch_size=4,
                   learning_rate=2e-2, precision="fp32", **extra)
    run_id = store.create_run(spec, status="running")
    assert execution.execute(spec, store, run_id) == 0, store.get(run_id).get("error")
    return run_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("home"))
    cls = {(m, c, s): _train(store, "classification", m, c, s) for m, c, s in CLASSIFY}
    summ = {(m, c, s): _train(store, "summarization", m, c, s) for m, c, s in SUMMARIZE}
    return store, cls, summ


@pytest.fixture(scope="module")
def engine(trained):
    return infer.CompareEngine(trained[0], device="cpu", precision="fp32")


def _alone(store, run_id, text):
    """The adapter evaluated by itself: a fresh base model with only this adapter applied."""
    rec = adapters.read_adapter(store.adapter_path(run_id))
    spec = rec["_spec"]
    model = adapters.load_adapter_model(store.adapter_path(run_id)).eval()
    from peftcompare.engine.models import load_model

    loaded = load_model(spec.model_name)
    feats = loaded.family.encode_inputs([data_mod.render(spec.prompt_template, text)], loaded.tokenizer,
                                        spec.max_source_length)
    if spec.task == "classification":
        labels, probs = eval_mod.classify(model, loaded.family, loaded.tokenizer, feats, rec["label_words"], 4)
        return labels[0], probs[0]
    return eval_mod.summarize(model, loaded.family, loaded.tokenizer, feats, 4, spec.max_target_length)[0], None


def test_every_method_answers_in_one_comparison(trained, engine):
    store, cls, _ = trained
    out = engine.compare(TEXT, list(cls.values()))
    assert {c["method"] for c in out["columns"]} == {m for m, _, _ in CLASSIFY} | {methods.BASELINE}
    # every way the engine serves an adapter is exercised here (each method's own answer: tests/test_zoo.py)
    assert {methods.get_method(c["method"]).serve for c in out["columns"]} == {m.serve for m in methods.METHODS.values()}
    by_key = {c["key"]: c for c in out["columns"]}
    n_lora = sum(1 for m, _, _ in CLASSIFY if m == "lora")
    assert by_key[infer.BASE]["batched_with"] == 1 + n_lora  # zero-shot rides with the LoRA adapters
    for (m, c, s), run_id in cls.items():
        col = by_key[run_id]
        if m == "lora":
            assert col["batched_with"] == 1 + n_lora
        if m in ("prompt", "ptuning"):
            assert col["batched_with"] == 3  # two prompt-tuning adapters + one p-tuning adapter
        assert col["output"] in ("negative", "positive") and 0.5 <= col["probability"] <= 1.0


def test_compare_equals_each_adapter_alone_classification(trained, engine):
    store, cls, _ = trained
    out = {c["key"]: c for c in engine.compare(TEXT, list(cls.values()))["columns"]}
    probs = set()
    for key, run_id in cls.items():
        label, prob = _alone(store, run_id, TEXT)
        assert out[run_id]["output"] == label, key
        assert out[run_id]["probability"] == pytest.approx(prob, abs=1e-4), key
        probs.add(round(prob, 4))
    assert len(probs) > 3, "the adapters are indistinguishable: the comparison would prove nothing"


def test_zero_shot_column_is_the_untouched_base(trained, engine):
    store, cls, _ = trained
    with_all = {c["key"]: c for c in engine.compare(TEXT, list(cls.values()))["columns"]}
    alone = {c["key"]: c for c in engine.compare(TEXT, [], model_name="builtin:tiny-t5")["columns"]}
    assert with_all[infer.BASE]["probability"] == pytest.approx(alone[infer.BASE]["probability"], abs=1e-5)
    # swapped-in weights (full, bitfit) went back out: a second zero-shot call is unchanged
    again = engine.compare(TEXT, [], model_name="builtin:tiny-t5")["columns"][0]
    assert again["probability"] == pytest.approx(alone[infer.BASE]["probability"], abs=1e-6)


def test_mixed_batch_equals_one_by_one(trained, engine):
    store, cls, _ = trained
    ids = [cls[k] for k in cls if k[0] in ("lora", "prompt", "ptuning")]
    together = {c["key"]: c for c in engine.compare(TEXT, ids)["columns"]}
    for run_id in ids:
        single = {c["key"]: c for c in engine.compare(TEXT, [run_id])["columns"]}
        assert single[run_id]["batched_with"] in (1, 2)
        assert single[run_id]["output"] == together[run_id]["output"]
        assert single[run_id]["probability"] == pytest.approx(together[run_id]["probability"], abs=1e-5)


def test_generation_equals_each_adapter_alone(trained, engine):
    store, _, summ = trained
    out = {c["key"]: c for c in engine.compare(DIALOGUE, list(summ.values()))["columns"]}
    texts = set()
    for key, run_id in summ.items():
        text, _ = _alone(store, run_id, DIALOGUE)
        assert out[run_id]["output"] == text, key
        single = {c["key"]: c for c in engine.compare(DIALOGUE, [run_id])["columns"]}
        assert single[run_id]["output"] == text, key
        texts.add(text)
    assert out[infer.BASE]["batched_with"] == 3
    assert all(t for t in texts)


def test_adapter_for_another_base_model_is_refused(trained, engine, tmp_path):
    store, cls, _ = trained
    lora = cls[("lora", 4, 1)]
    with pytest.raises(ValueError, match="different base models"):
        engine.compare(TEXT, [lora], model_name="builtin:random-flan-t5-small")
    # an adapter whose record names another model than its weights were made for
    fake = Store(tmp_path / "fake")
    spec = RunSpec(model_name="builtin:random-flan-t5-small", method="lora", capacity=4)
    run_id = fake.create_run(spec, status="running")
    staging = fake.staging_path(run_id)
    for f in store.adapter_path(lora).iterdir():
        shutil.copy(f, staging / f.name)
    record = json.loads((staging / "run.json").read_text())
    record["spec"]["model_name"] = "builtin:random-flan-t5-small"
    (staging / "run.json").write_text(json.dumps(record))
    fake.transition(run_id, "completed", ("running",), adapter_dir=str(fake.commit_adapter(run_id, staging)))
    other = infer.CompareEngine(fake, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="another base model.*lora_A"):
        other.compare(TEXT, [run_id])
    # the refused adapter left the shared base untouched
    assert other.lora is None
    assert not any("lora" in n for n, _ in other.loaded.model.named_modules())


def test_unknown_run_and_empty_text_are_one_line_errors(trained, engine):
    with pytest.raises(ValueError, match="no run"):
        engine.compare(TEXT, ["20990101-000000-nope"])
    with pytest.raises(ValueError, match="text"):
        engine.compare("   ", [])


def test_bf16_engine_agrees_with_fp32(trained):
    store, cls, _ = trained
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN")
    ids = [cls[("lora", 4, 1)], cls[("prompt", 4, 1)]]
    fp32 = {c["key"]: c for c in infer.CompareEngine(store, "cpu", "fp32").compare(TEXT, ids)["columns"]}
    bf16 = {c["key"]: c for c in infer.CompareEngine(store, "cpu", "bf16").compare(TEXT, ids)["columns"]}
    for k in fp32:
        assert bf16[k]["probability"] == pytest.approx(fp32[k]["probability"], abs=0.03)


def test_lora_bank_equals_peft_mixed_batches(trained):
    """The gathered LoRA bank (default) and PEFT's mixed-adapter batches give the same answers."""
    store, cls, summ = trained
    for text, runs in ((TEXT, cls), (DIALOGUE, summ)):
        ids = [v for k, v in runs.items() if k[0] == "lora"]
        bank = infer.CompareEngine(store, "cpu", "fp32", lora_backend="bank").compare(text, ids)["columns"]
        peft = infer.CompareEngine(store, "cpu", "fp32", lora_backend="peft").compare(text, ids)["columns"]
        for b, p in zip(bank, peft):
            assert b["output"] == p["output"]
            if b["probability"] is not None:
                assert b["probability"] == pytest.approx(p["probability"], abs=1e-5)
    with pytest.raises(ValueError, match="lora_backend"):
        infer.CompareEngine(store, "cpu", lora_backend="fast")


def test_every_serve_kind_has_a_runner():
    """One dispatch table covers every SERVE_* kind, so a method registered with any of them is served."""
    kinds = {v for k, v in vars(methods.base).items() if k.startswith("SERVE_")}
    assert kinds and set(infer.RUNNERS) == kinds
    assert all(m.serve in infer.RUNNERS for m in methods.METHODS.values())


def test_a_new_peft_method_is_served_without_changes(tmp_path, monkeypatch):
    """A method registered with serve=SERVE_PEFT (here LoRA's config under a new name) trains and answers in
    a comparison exactly as it does alone, with no change to the Compare engine."""
    import dataclasses

    new = dataclasses.replace(methods.get_method("lora"), name="lora_via_peft", title="LoRA via PEFT",
                              serve=methods.SERVE_PEFT)
    monkeypatch.setitem(methods.METHODS, new.name, new)
    store = Store(tmp_path / "home")
    run_id = _train(store, "classification", new.name, 4, 1)
    out = {c["key"]: c for c in infer.CompareEngine(store, "cpu", "fp32").compare(TEXT, [run_id])["columns"]}
    label, prob = _alone(store, run_id, TEXT)
    assert out[run_id]["method"] == new.name and out[run_id]["batched_with"] == 1  # its own pass
    assert out[run_id]["output"] == label
    assert out[run_id]["probability"] == pytest.approx(prob, abs=1e-4)
