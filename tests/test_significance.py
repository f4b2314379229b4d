"""Issue 15, point 3: every evaluated run stores its per-example answers (compressed, in the store), and paired
tests between runs or groups of seeds read them: `significance A B`, without running a model."""
from __future__ import annotations

import json
import random
import sqlite3

import numpy as np
import pytest

from peftcompare.service import significance, stats
from peftcompare.service.store import SCHEMA_VERSION, Store
from pipeline_helpers import cli, run_in_process, tiny_spec

EVAL = 32


# -- the vectorised test ------------------------------------------------------------------------------------------
def test_seed_averaged_bootstrap_agrees_with_the_plain_one():
    rng = random.Random(3)
    a = [1.0 if rng.random() < 0.8 else 0.0 for _ in range(300)]
    b = [1.0 if rng.random() < 0.7 else 0.0 for _ in range(300)]
    plain = stats.paired_bootstrap(a, b, resamples=2000)
    fast = stats.paired_bootstrap_seeds([np.array(a)[:, None]], [np.array(b)[:, None]], stats.mean_score, 2000)
    assert fast.difference == pytest.approx(plain.difference, abs=1e-12)
    assert fast.low == pytest.approx(plain.low, abs=0.02) and fast.high == pytest.approx(plain.high, abs=0.02)
    assert fast.p_value == pytest.approx(plain.p_value, abs=0.03)  # Monte Carlo error of 2000 resamples
    same = stats.paired_bootstrap_seeds([np.array(a)[:, None]], [np.array(a)[:, None]], stats.mean_score, 200)
    assert same.difference == 0 and same.p_value == 1.0
    # two seeds of a side: the mean of their scores, not the score of their pooled answers
    two = stats.paired_bootstrap_seeds([np.array(a)[:, None], np.array(b)[:, None]], [np.array(b)[:, None]],
                                       stats.mean_score, 200)
    assert two.difference == pytest.approx((sum(a) + sum(b)) / 600 - sum(b) / 300)


def test_f1_from_components_is_sklearns():
    from sklearn.metrics import f1_score

    rng = random.Random(5)
    refs = [rng.choice("pn") for _ in range(200)]
    preds = [r if rng.random() < 0.7 else rng.choice("pn") for r in refs]
    comps = np.array([[p == "p" and r == "p", p == "p" and r != "p", p != "p" and r == "p"]
                      for p, r in zip(preds, refs)], dtype=float)
    assert stats.f1_score(comps.sum(0), 200) == pytest.approx(f1_score(refs, preds, pos_label="p"))


# -- on real runs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("sig-home"))
    common = dict(precision="fp32", eval_samples=EVAL)
    runs = {"zero": run_in_process(store, tiny_spec(method="zero_shot", **common))}
    for seed in (1, 2):
        runs[f"lora{seed}"] = run_in_process(store, tiny_spec(method="lora", capacity=4, seed=seed,
                                                              learning_rate=2e-2, num_train_epochs=2, **common))
    return store, runs


def test_every_evaluated_run_stores_its_answers_compressed(lab):
    store, runs = lab
    for r in runs.values():
        per = store.examples(r["run_id"])
        assert len(per["key"]) == len(per["prediction"]) == len(per["distribution"]) == EVAL
        assert sum(per["correct"]) / EVAL == pytest.approx(r["metrics"]["accuracy"])
        assert per["label_words"] == ["negative", "positive"] and len(set(per["key"])) == EVAL
        assert "_per_example" not in r["metrics"]  # not in the record's metrics, nor the adapter's run.json
    with sqlite3.connect(store.db_path) as conn:
        blob, n = conn.execute("SELECT data, n FROM examples WHERE run_id=?", (runs["lora1"]["run_id"],)).fetchone()
    assert n == EVAL and len(blob) < len(json.dumps(store.examples(runs["lora1"]["run_id"]))) / 2
    adapter_record = json.loads((store.adapter_path(runs["lora1"]["run_id"]) / "run.json").read_text())
    assert "per_example" not in adapter_record and adapter_record["selection"]["on"] == "dev"


def test_groups_and_runs_through_the_cli(lab):
    store, runs = lab
    out = cli("significance", "lora:4", "zero_shot", "--task", "classification", "--json", home=store.home,
              check=True)
    result = json.loads(out.stdout)
    lora_f1 = [runs["lora1"]["metrics"]["f1"], runs["lora2"]["metrics"]["f1"]]
    # the observed difference is the seed-averaged F1 minus zero-shot's, on the same 32 examples
    assert result["difference"] == pytest.approx(sum(lora_f1) / 2 - runs["zero"]["metrics"]["f1"], abs=1e-9)
    assert result["n_examples"] == EVAL and (result["n_seeds_a"], result["n_seeds_b"]) == (2, 1)
    assert result["ci_low"] <= result["difference"] <= result["ci_high"] and 0 < result["p_value"] <= 1
    assert sorted(result["runs_a"]) == sorted(runs[k]["run_id"] for k in ("lora1", "lora2"))
    text = cli("significance", runs["lora1"]["run_id"], runs["lora2"]["run_id"], "--metric", "accuracy",
               home=store.home, check=True).stdout
    diff = runs["lora1"]["metrics"]["accuracy"] - runs["lora2"]["metrics"]["accuracy"]
    assert f"Accuracy difference {diff:+.4f}" in text and "paired bootstrap" in text and f"{EVAL} shared" in text
    # the generate-and-parse protocol is testable too (stored with the same evaluation)
    gen = significance.test(store, "lora:4", "zero_shot", metric="f1_generate", resamples=200)
    assert gen["difference"] == pytest.approx(sum(runs[k]["metrics"]["f1_generate"] for k in ("lora1", "lora2")) / 2
                                              - runs["zero"]["metrics"]["f1_generate"], abs=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["lora:x", "zero_shot"], "capacity after ':'"), (["magic", "zero_shot"], "neither a run id nor a method"),
    (["lora:16", "zero_shot"], "no completed LoRA 16 runs"), (["lora", "zero_shot", "--metric", "rougeL"],
                                                               "rougeL cannot be tested"),
    (["lora", "zero_shot", "--resamples", "5"], "resamples"),
])
def test_mistakes_are_one_line(lab, argv, message):
    store, _ = lab
    proc = cli("significance", *argv, home=store.home)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_a_run_without_stored_answers_is_named(lab):
    store, runs = lab
    rid = runs["lora2"]["run_id"]
    saved = store.examples(rid)
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("DELETE FROM examples WHERE run_id=?", (rid,))
    try:
        with pytest.raises(ValueError, match=f"run {rid} has no stored per-example answers"):
            significance.test(store, "lora:4", "zero_shot")
        rows = __import__("peftcompare.service.summary", fromlist=["x"]).summarize(store.list_runs())
        assert all(v is None or v["n_examples"] for v in significance.adjacent(store, rows).values())
    finally:
        store.put_examples(rid, "validation", saved)
    store.delete(rid)
    assert store.examples(rid) is None  # deleted with its run


def test_a_store_from_before_per_example_answers_opens_and_reads(tmp_path):
    """Schema 3 (no examples table, no selection columns) with a version-1 record: opening migrates it, and the
    old run reads as chosen on validation everywhere (it was), with no answers to pair."""
    from peftcompare.core.spec import RunSpec
    from peftcompare.service import analysis, summary

    store = Store(tmp_path)
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, selection="validation").resolved()
    old_json = json.dumps({**{k: v for k, v in spec.to_dict().items() if k not in
                              ("selection", "dev_samples", "budget", "budget_value")}, "spec_version": 1})
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("DROP TABLE examples")
        for col in ("best_epoch", "selection_json", "budget_json", "train_flops", "model_fingerprint"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        conn.execute("INSERT INTO runs (run_id, spec_hash, spec_json, task, method, capacity, seed, model_name, "
                     "status, created_at, metrics_json, epochs_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     ("old-run", spec.spec_hash(), old_json, "classification", "lora", 4, 42, spec.model_name,
                      "completed", 1.0, json.dumps({"f1": 0.7, "accuracy": 0.7}),
                      json.dumps([{"epoch": 1, "f1": 0.7, "accuracy": 0.7}])))
        conn.execute("PRAGMA user_version=3")
    reopened = Store(tmp_path)
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # migrated to today's
    run = reopened.get("old-run")
    assert run["spec"].selection == "validation" and run["spec"].spec_hash() == spec.spec_hash()
    assert analysis.selected_on(run) == "validation" and reopened.examples("old-run") is None
    (row,) = summary.summarize(reopened.list_runs())
    assert row["selected_on"] == "validation" and row["mean"] == 0.7
    assert reopened.find_completed(RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4,
                                           selection="validation"))["run_id"] == "old-run"
    assert analysis.load_df(reopened)["best_epoch"].tolist() == [1]
