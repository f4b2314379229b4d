"""Issue 15, point 5: budget-matched comparisons. Every method gets the same optimizer steps, wall-clock
seconds or estimated training FLOPs; the estimate is recorded; the Curves page puts time or FLOPs on x."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from peftcompare.core.spec import RunSpec
from peftcompare.engine import budget, data as data_mod, models
from peftcompare.engine.train import prepare_model
from peftcompare.service import analysis, curves, runs as runs_mod
from peftcompare.service.store import Store
from pipeline_helpers import run_in_process, tiny_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = [dict(method="lora", capacity=4), dict(method="prompt", capacity=10)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("budget-home"))


def test_the_same_steps_for_every_method(store):
    # 32 examples in batches of 8: 4 steps an epoch, so 6 steps end inside the second epoch
    grid = runs_mod.sweep_specs(tiny_spec(budget="steps", budget_value=6), ["lora", "prompt"], [1],
                                capacities={"lora": [4], "prompt": [10]}, zero_shot=False)
    assert {(s.budget, s.budget_value) for s in grid} == {("steps", 6.0)}
    for spec in grid:
        run = run_in_process(store, spec)
        assert run["budget"]["steps"] == run["total_steps"] == len(store.steps(run["run_id"])) == 6
        assert [e["step"] for e in run["epochs"]] == [4, 6]  # scored after the pass and where the budget ended
        assert run["epochs"][-1]["train_loss"] > 0 and run["best_epoch"] in (1, 2)
        assert run["train_flops"] == run["budget"]["train_flops"] > 0


def test_the_same_flops_for_every_method(store):
    value = 3e8
    spent = {}
    for kw in METHODS:
        run = run_in_process(store, tiny_spec(budget="flops", budget_value=value, **kw))
        b = run["budget"]
        fm = budget.FlopModel(**{k: v for k, v in b["flop_model"].items() if k != "formula"})
        longest = fm.example({"input_ids": [0] * 256, "labels": [0] * 8})  # at most the task's lengths
        # the budget is spent, overshot by at most the last step (8 examples)
        assert value <= b["train_flops"] < value + 8 * longest
        assert run["epochs"][-1]["train_flops"] == b["train_flops"] and b["flop_model"]["formula"]
        spent[kw["method"]] = b
    # a prompt's virtual tokens lengthen every input: the same FLOPs buy it a different number of steps
    assert spent["prompt"]["flop_model"]["virtual_tokens"] == 10 and spent["lora"]["flop_model"]["virtual_tokens"] == 0
    assert spent["prompt"]["steps"] != spent["lora"]["steps"]


def test_the_same_seconds_for_every_method(store):
    for kw in METHODS:
        run = run_in_process(store, tiny_spec(budget="seconds", budget_value=1.5, train_samples=64, **kw))
        b = run["budget"]
        assert 1.5 <= b["train_seconds"] < 1.5 + 2.0  # one tiny step is milliseconds; the flush a little more
        assert b["steps"] == len(store.steps(run["run_id"])) and run["epochs"]
        assert abs(run["train_runtime"] - b["train_seconds"]) < 1.0


def test_flop_estimate_counts_each_side_of_the_model():
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4).resolved()
    loaded = models.load_model(spec.model_name)
    enc = sum(m.weight.numel() for m in loaded.model.get_encoder().modules() if isinstance(m, torch.nn.Linear))
    frozen = budget.flop_model(loaded.model, loaded.family, spec)
    assert frozen.n_source == enc and frozen.n_target > 0  # decoder, LM head included
    model = prepare_model(spec, loaded)
    fm = budget.flop_model(model, loaded.family, spec)
    lora_enc = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and ".encoder." in n)
    lora_dec = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and ".decoder." in n)
    assert (fm.t_source, fm.t_target) == (lora_enc, lora_dec) and lora_enc > 0
    assert fm.n_source == enc + lora_enc  # LoRA's own matmuls are paid per token too
    feature = {"input_ids": list(range(20)), "labels": [5, 6, -100]}
    assert fm.example(feature) == (4 * fm.n_source + 2 * fm.t_source) * 20 + (4 * fm.n_target + 2 * fm.t_target) * 2
    # full fine-tuning: 6 N per token, the textbook count
    full = RunSpec(model_name="builtin:tiny-t5", method="full").resolved()
    loaded = models.load_model(full.model_name)
    fm = budget.flop_model(prepare_model(full, loaded), loaded.family, full)
    src_only = {"input_ids": [0] * 10}
    assert fm.example(src_only) == 4 * fm.n_source * 10 + 2 * fm.t_source * 10 and fm.t_source >= fm.n_source
    # a decoder-only model: one side, every token
    causal = RunSpec(model_name="builtin:tiny-gpt2", method="lora", capacity=4).resolved()
    loaded = models.load_model(causal.model_name)
    fm = budget.flop_model(prepare_model(causal, loaded), loaded.family, causal)
    assert fm.n_target == fm.t_target == 0 and fm.n_source > 0


def test_budget_mistakes_are_one_line():
    for kw, needle in [(dict(budget="steps"), "budget_value"), (dict(budget="minutes", budget_value=3), "budget"),
                       (dict(budget="steps", budget_value=1.5), "whole")]:
        with pytest.raises(ValueError, match=needle) as err:
            RunSpec(**kw)
        assert "\n" not in str(err.value)
    assert data_mod.dev_size(RunSpec(), 10) == 200  # unrelated to budgets: 10 % of 2000


def test_curves_can_put_time_or_flops_on_x(store):
    df = analysis.load_df(store, task="classification")
    done = df[df["status"] == "completed"]
    assert done["train_flops"].notna().all() and (done["train_flops"] > 0).all()
    agg = analysis.aggregate(done, "f1")
    for x in ("train_flops", "train_runtime"):
        assert x in curves.X_FIELDS
        spec = curves.efficiency_chart(agg, "f1", x, "ci").to_dict()
        point = next(lay for lay in spec["layer"] if lay["mark"].get("type") == "point" and "tooltip"
                     in lay["encoding"])
        data = pd.DataFrame(spec["datasets"][point["data"]["name"] if "data" in point else spec["data"]["name"]])
        assert sorted(data["x"]) == sorted(agg.loc[agg[x] > 0, x].astype(float))
        assert point["encoding"]["x"]["title"] == curves.X_FIELDS[x]
