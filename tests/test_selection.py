"""Issue 15, point 1 and 2: the best epoch and the learning rate are chosen on a dev split carved from the
training data, never on the validation split (unless the original protocol is asked for, and then it says
so); a learning-rate search picks one rate per method and capacity over seeds."""
from __future__ import annotations

import json

import pytest

from peftcompare.core.spec import RunSpec
from peftcompare.engine import data as data_mod
from peftcompare.service import summary
from peftcompare.service.store import Store
from pipeline_helpers import SAMPLES, cli, run_in_process, tiny_spec


def _keys(examples):
    return [data_mod.example_key(e) for e in examples]


# -- the dev split ----------------------------------------------------------------------------------------------
def test_dev_split_is_deterministic_disjoint_and_sized_by_the_rule():
    spec = tiny_spec(dev_samples=0, train_samples=200).resolved()
    a, b = data_mod.load_task_data(spec), data_mod.load_task_data(spec)
    assert _keys(a.dev) == _keys(b.dev) and _keys(a.train) == _keys(b.train)  # by seed, every time
    assert len(a.dev) == 100  # 10 % of 200 is 20: at least 100 where the data allows
    assert not set(_keys(a.dev)) & set(_keys(a.train))
    other = data_mod.load_task_data(spec.replace(seed=7))
    assert _keys(other.dev) != _keys(a.dev)
    # the training subsample is the one the original protocol trains on: the dev split comes from the rest
    legacy = data_mod.load_task_data(spec.replace(selection="validation"))
    assert _keys(legacy.train) == _keys(a.train) and legacy.dev == []
    assert len(data_mod.load_task_data(spec.replace(dev_samples=30)).dev) == 30
    assert data_mod.dev_size(spec.replace(train_samples=2000), 10**6) == 200  # 10 % above the floor
    # all of the training data asked for (train_samples=0): the dev split is carved out of it
    whole = data_mod.load_task_data(spec.replace(train_samples=0))
    assert len(whole.dev) == 100 and len(whole.train) + len(whole.dev) == 600
    assert not set(_keys(whole.dev)) & set(_keys(whole.train))
    # the fingerprint of a run without a dev split is what it was before dev splits existed
    assert legacy.fingerprint() != a.fingerprint()


def _validation_files(tmp_path, n: int = 24):
    rows = [json.loads(line) for line in (SAMPLES / "sst2_validation.jsonl").read_text().splitlines()[:n]]
    same, flipped = tmp_path / "val.jsonl", tmp_path / "val_flipped.jsonl"
    same.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flipped.write_text("".join(json.dumps({**r, "label": 1 - int(r["label"])}) + "\n" for r in rows))
    return str(same), str(flipped)


def test_validation_labels_never_influence_selection(tmp_path):
    """The proof the issue asks for: the validation labels flipped, everything selection sees is unchanged
    (every epoch's dev score, the chosen epoch, the trained weights), only the reported score moves; with the
    original protocol the same flip changes what selection sees."""
    import torch
    from safetensors.torch import load_file

    same, flipped = _validation_files(tmp_path)
    store = Store(tmp_path / "home")
    common = dict(method="lora", capacity=4, num_train_epochs=4, learning_rate=2e-2, dev_samples=48, eval_samples=0,
                  precision="fp32")
    a = run_in_process(store, tiny_spec(validation_file=same, **common))
    b = run_in_process(store, tiny_spec(validation_file=flipped, **common))
    assert a["selection"]["on"] == b["selection"]["on"] == "dev" and a["selection"]["examples"] == 48
    assert len({e["dev_f1"] for e in a["epochs"]}) > 1, "every epoch scored alike: the test would prove nothing"
    assert [e["dev_f1"] for e in a["epochs"]] == [e["dev_f1"] for e in b["epochs"]]
    assert a["best_epoch"] == b["best_epoch"] and a["selection"]["score"] == b["selection"]["score"]
    wa = load_file(str(store.adapter_path(a["run_id"]) / "adapter_model.safetensors"))
    wb = load_file(str(store.adapter_path(b["run_id"]) / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same chosen state
    # the validation split is evaluated once, on that state: the flip inverts every answer's correctness
    assert a["metrics"]["accuracy"] == pytest.approx(1 - b["metrics"]["accuracy"])
    assert not any("f1" in e or "accuracy" in e for e in a["epochs"])  # no validation score during training
    per_a, per_b = store.examples(a["run_id"]), store.examples(b["run_id"])
    assert per_a["prediction"] == per_b["prediction"] and per_a["key"] != per_b["key"]  # other labels, other keys
    # the original protocol: the epochs ARE scored on validation, so flipped labels change what it chooses from
    legacy = dict(common, selection="validation")
    c = run_in_process(store, tiny_spec(validation_file=same, **legacy))
    d = run_in_process(store, tiny_spec(validation_file=flipped, **legacy))
    assert c["selection"]["on"] == "validation"
    assert [e["accuracy"] for e in c["epochs"]] == pytest.approx([1 - e["accuracy"] for e in d["epochs"]])
    assert c["metrics"]["f1"] == max(e["f1"] for e in c["epochs"])


def test_a_dev_split_needs_training_data_to_spare(tmp_path):
    """Two examples: one trains, one is the dev split (the subsample keeps at least half); one example leaves
    nothing to carve, and the run says so in one line instead of selecting on nothing."""
    from peftcompare.service import execution

    two = data_mod.split_dev(["a", "b"], tiny_spec(train_samples=0))
    assert two == (["a"], ["b"]) or two == (["b"], ["a"])
    one = tmp_path / "one.jsonl"
    one.write_text('{"dialogue": "Ann: hi Ben", "summary": "Ann greets Ben."}\n')
    spec = tiny_spec(task="summarization", train_file=str(one), train_samples=0)
    store = Store(tmp_path / "home")
    run_id = store.create_run(spec, status="running")
    assert execution.execute(spec, store, run_id) == 1
    error = store.get(run_id)["error"]
    assert error.startswith("selection: the training data is too small") and "\n" not in error


# -- the learning-rate rule ---------------------------------------------------------------------------------------
def _fake(run_id, lr, seed, dev, val, selection="dev", method="lora"):
    spec = RunSpec(model_name="builtin:tiny-t5", method=method, capacity=4, learning_rate=lr, seed=seed,
                   selection=selection).resolved()
    return {"run_id": run_id, "spec": spec, "status": "completed", "created_at": seed,
            "metrics": {"f1": val}, "selection": {"on": spec.selection, "score": dev if selection == "dev" else val},
            "trainable_params": 6144}


def test_learning_rate_is_chosen_on_dev_averaged_over_seeds():
    runs = [  # 1e-3 wins seed 1 on dev, 1e-2 wins on average; validation says the opposite
        _fake("a1", 1e-3, 1, dev=0.90, val=0.99), _fake("a2", 1e-3, 2, dev=0.50, val=0.99),
        _fake("b1", 1e-2, 1, dev=0.80, val=0.60), _fake("b2", 1e-2, 2, dev=0.78, val=0.62),
        _fake("b3", 1e-2, 3, dev=0.79, val=0.64)]
    (row,) = summary.summarize(runs)
    assert row["learning_rate"] == 1e-2 and row["learning_rates_tried"] == [1e-3, 1e-2]
    assert row["run_ids"] == ["b1", "b2", "b3"] and row["n_seeds"] == 3 and row["selected_on"] == "dev"
    assert row["mean"] == pytest.approx(0.62) and row["ci_low"] < 0.62 < row["ci_high"] and not row["warning"]
    assert {r["run_id"] for r in summary.selected_runs(runs)} == {"b1", "b2", "b3"}
    # the original protocol's runs choose on validation, and say so
    legacy = [_fake("c1", 1e-3, 1, 0, 0.7, "validation"), _fake("d1", 1e-2, 1, 0, 0.6, "validation")]
    (row,) = summary.summarize(legacy)
    assert row["learning_rate"] == 1e-3 and row["selected_on"] == "validation"
    assert row["warning"].startswith("only 1 seed") and row["ci_low"] is None
    # two protocols are two experiments, never averaged together
    assert len(summary.summarize(runs + legacy)) == 2


def test_sweep_learning_rate_search_through_the_cli(tmp_path):
    home = tmp_path / "home"
    args = ["sweep", "--model_name", "builtin:tiny-t5", "--train_samples", "24", "--eval_samples", "8",
            "--dev_samples", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
            "--methods", "lora", "--lora_ranks", "4", "--seeds", "1", "2", "--learning_rates", "1e-4", "3e-2",
            "--no_zero_shot"]
    out = cli(*args, home=home, check=True, timeout=600)
    assert "4 runs in the grid" in out.stdout
    rows = json.loads(cli("results", "--summary", "--format", "json", home=home, check=True).stdout)
    (row,) = rows
    runs = Store(home).list_runs()
    by_lr = {}
    for r in runs:
        by_lr.setdefault(r["spec"].learning_rate, []).append(r["selection"]["score"])
    best = max(sorted(by_lr), key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))
    assert row["learning_rate"] == best and row["learning_rates_tried"] == [1e-4, 3e-2]
    assert row["n_seeds"] == 2 and row["selected_on"] == "dev" and row["warning"].startswith("only 2 seeds")
    chosen = [r for r in runs if r["spec"].learning_rate == best]
    assert row["mean"] == pytest.approx(sum(r["metrics"]["f1"] for r in chosen) / 2)
    csv = cli("results", "--summary", "--format", "csv", home=home, check=True).stdout.splitlines()
    assert csv[0].split(",")[:11] == ["task", "model_name", "dataset", "method", "capacity", "label", "metric",
                                      "n_seeds", "mean", "ci_low", "ci_high"] and len(csv) == 2
    table = cli("results", "--summary", home=home, check=True).stdout
    assert "95% CI" in table and "Student t-interval" in table and "dev" in table
    per_run = json.loads(cli("results", "--format", "json", home=home, check=True).stdout)
    assert {r["selected_on"] for r in per_run} == {"dev"}  # every record says which
    # without --learning_rate(s) each method trains at its own default rate
    from peftcompare.service import runs as runs_mod

    base = RunSpec(model_name="google/flan-t5-small")
    grid = runs_mod.sweep_specs(base, ["lora", "prompt"], [1], zero_shot=False, method_rates=True)
    from peftcompare.core import methods

    assert {s.method: s.learning_rate for s in grid} == {m: methods.get_method(m).learning_rate
                                                         for m in ("lora", "prompt")}
    bad = cli("sweep", "--learning_rate", "1e-3", "--learning_rates", "1e-3", "2e-3", home=home)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: learning_rates:")


def test_the_sweep_form_searches_learning_rates(app_home):
    """The Train page's sweep form: empty learning rates train each method at its own default; a list is a
    search, every (method, capacity, seed) at each rate; a bad entry is one line and nothing can be queued."""
    from streamlit.testing.v1 import AppTest

    from conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/train.py").run()
    at.radio(key="tr_mode").set_value("Sweep grid").run()
    at.multiselect(key="tr_sweep_methods").set_value(["lora"]).run()
    at.text_input(key="tr_sweep_caps_lora").input("4").run()
    assert any("**2 runs** in the grid" in m.value for m in at.markdown)  # zero-shot + LoRA 4
    assert any("each method at its own default (LoRA 0.02)" in c.value for c in at.caption)
    at.text_input(key="tr_sweep_lrs").input("1e-3, 5e-3 1e-2").run()
    assert not at.error, [e.value for e in at.error]
    assert any("**4 runs** in the grid" in m.value for m in at.markdown)  # zero-shot + LoRA 4 at 3 rates
    at.text_input(key="tr_sweep_lrs").input("1e-3, fast").run()
    assert [e.value for e in at.error] == ["Learning rates: expected numbers like 1e-4, 5e-4, got 'fast'"]
    assert at.button(key="tr_enqueue").disabled
    # the protocol's own settings are in the form, with the spec's help
    assert at.selectbox(key="tr_selection").value == "dev" and at.selectbox(key="tr_budget").value == "epochs"


def test_selection_by_dev_loss_generates_nothing_until_the_chosen_state(tmp_path, monkeypatch):
    """selection_metric=loss: summarization picks its epoch by the dev split's loss (one forward per batch, no
    generation per epoch); the validation split is generated and scored once, on the chosen state."""
    from peftcompare.engine import evaluate

    calls = []
    real = evaluate.summarize_many  # every generation pass goes through it (a run's, or a pack's)

    def counting(*a, **k):
        calls.append([len(f) for f in a[3]])
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "summarize_many", counting)
    store = Store(tmp_path)
    run = run_in_process(store, tiny_spec(task="summarization", method="lora", capacity=4, num_train_epochs=3,
                                          dev_samples=4, selection_metric="loss"))
    losses = [e["dev_eval_loss"] for e in run["epochs"]]
    assert len(losses) == 3 and not any("dev_rougeL" in e for e in run["epochs"])
    assert run["best_epoch"] == 1 + losses.index(min(losses))
    assert run["selection"]["metric"] == "loss" and run["selection"]["score"] == min(losses)
    assert "rougeL" in run["metrics"] and run["metrics"]["eval_samples"] == 4
    assert calls == [[4]]  # the one generation pass: the validation split, once
    # the default chooses by the metric itself: every epoch generates the dev split
    calls.clear()
    run_in_process(store, tiny_spec(task="summarization", method="lora", capacity=4, num_train_epochs=2,
                                    dev_samples=4))
    assert len(calls) == 3
