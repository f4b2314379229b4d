"""Every fast path is really on, and recorded in the run (speed itself is measured in bench/, not here)."""
from __future__ import annotations

import os

import pytest
import torch

from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import models, runtime
from peftcompare.core.spec import RunSpec
from peftcompare.service.execution import execute
from peftcompare.service.store import Store

FAST_KEYS = {"threads", "flush_denormal", "gomp_spincount", "precision", "dynamic_padding",
             "length_grouped_batches", "label_scoring", "tokenization_cache", "sorted_generation_kv_cache",
             "world_size", "fused_gelu", "fused_t5_norm", "pooled_dropout", "fused_adamw", "lora_inputs_uncast"}


@pytest.fixture(scope="module")
def tiny():
    return models.load_model("builtin:tiny-t5")


def test_run_records_every_fast_path(tmp_path):
    store = Store(tmp_path)
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=16, eval_samples=4,
                   num_train_epochs=1, per_device_train_batch_size=8)
    run_id = store.create_run(spec, status="running")
    assert execute(spec, store, run_id) == 0
    fast = store.get(run_id)["fast_paths"]
    assert FAST_KEYS <= set(fast)
    assert fast["flush_denormal"] is True and fast["dynamic_padding"] and fast["length_grouped_batches"]
    assert fast["label_scoring"] is True and fast["sorted_generation_kv_cache"] is False
    assert fast["threads"] == runtime.usable_cores() and fast["world_size"] == 1
    assert fast["precision"] == ("bf16" if runtime.bf16_supported("cpu") else "fp32")
    assert store.get(run_id)["precision"] == fast["precision"]
    assert fast["fused_gelu"] > 0 and fast["fused_t5_norm"] > 0 and fast["fused_adamw"] is True
    assert fast["pooled_dropout"] > 0  # LoRA's dropout (tiny-t5 itself has none)
    assert fast["lora_inputs_uncast"] == (12 if fast["precision"] == "bf16" else 0)
    # the tokenization cache was written, so the next run of a sweep reads it
    assert list((store.cache_dir / "tokenized").glob("*.json"))


def test_openmp_spin_default_is_set_before_torch_loads():
    import peftcompare  # noqa: F401

    assert os.environ.get("GOMP_SPINCOUNT")


def test_denormals_are_flushed():
    torch.set_flush_denormal(False)
    tiny_value = torch.tensor([1e-39], dtype=torch.float32)  # a denormal
    assert float(tiny_value * 1.0) != 0.0
    assert runtime.configure_cpu()["flush_denormal"] is True
    assert float(tiny_value * 1.0) == 0.0


def test_threads_are_shared_between_data_parallel_processes():
    cores = runtime.usable_cores()
    assert runtime.configure_cpu(2)["threads"] == max(1, cores // 2)
    assert torch.get_num_threads() == max(1, cores // 2)
    assert runtime.configure_cpu(1)["threads"] == cores


def test_auto_precision_follows_the_hardware():
    name, dtype = runtime.resolve_precision("auto", "cpu")
    native = bool({"avx512_bf16", "amx_bf16"} & runtime.cpu_flags())
    assert (name, dtype) == (("bf16", torch.bfloat16) if native else ("fp32", None))
    assert runtime.resolve_precision("fp32", "cpu") == ("fp32", None)
    with pytest.raises(ValueError, match="fp16"):
        runtime.resolve_precision("fp16", "cpu")


def test_dynamic_padding_pads_to_the_longest_in_the_batch(tiny):
    feats = [{"input_ids": [5] * n + [1], "labels": [7, 1]} for n in (3, 9, 4)]
    batch = tiny.family.collate(feats, tiny.tokenizer)
    assert batch["input_ids"].shape == (3, 10)  # not max_source_length (256)
    assert batch["attention_mask"].sum(1).tolist() == [4, 10, 5]
    assert (batch["labels"][:, 2:] == -100).all() if batch["labels"].shape[1] > 2 else True


def test_length_grouped_batches_cut_padding_and_cover_every_example():
    import random

    lengths = [random.Random(i).randint(5, 120) for i in range(400)]
    batches = data_mod.length_grouped_batches(lengths, 16, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    order = list(range(400))
    random.Random(0).shuffle(order)
    naive = sum(16 * max(lengths[i] for i in order[k:k + 16]) for k in range(0, 400, 16))
    assert padded < 0.7 * naive
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first: OOM shows at once


def test_tokenization_cache_is_read_back(tiny, tmp_path, monkeypatch):
    spec = RunSpec(model_name="builtin:tiny-t5").resolved()
    examples = [data_mod.Example("a fine film", "positive"), data_mod.Example("dull", "negative")]
    first = data_mod.tokenized(spec, tiny.family, tiny.tokenizer, examples, True, tmp_path)

    def boom(*a, **k):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(tiny.family, "encode", boom)
    assert data_mod.tokenized(spec, tiny.family, tiny.tokenizer, examples, True, tmp_path) == first


def test_label_scoring_is_one_forward_pass_per_batch(tiny):
    calls = []
    handle = tiny.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        feats = [{"input_ids": tiny.tokenizer(t)["input_ids"]} for t in ("good", "bad film", "fine", "meh")]
        preds, probs = eval_mod.classify(tiny.model, tiny.family, tiny.tokenizer, feats, ["negative", "positive"], 4)
    finally:
        handle.remove()
    assert len(calls) == 1 and len(preds) == 4 and all(0.5 <= p <= 1 for p in probs)


def test_generation_runs_length_sorted_batches_with_the_kv_cache(tiny, monkeypatch):
    seen = []
    original = tiny.family.generate

    def spy(model, batch, tokenizer, max_new_tokens, **kw):
        seen.append(batch["attention_mask"].sum(1).tolist())
        return original(model, batch, tokenizer, max_new_tokens, **kw)

    monkeypatch.setattr(tiny.family, "generate", spy)
    gen_kwargs = []
    real_generate = tiny.model.generate
    monkeypatch.setattr(tiny.model, "generate", lambda **kw: gen_kwargs.append(kw) or real_generate(**kw))
    feats = [{"input_ids": [5] * n + [1]} for n in (3, 30, 7, 12, 25, 4)]
    out = eval_mod.summarize(tiny.model, tiny.family, tiny.tokenizer, feats, 2, 4)
    assert len(out) == 6
    assert seen == [[31, 26], [13, 8], [5, 4]]  # longest first, similar lengths together
    assert all(kw["use_cache"] is True and kw["num_beams"] == 1 for kw in gen_kwargs)
