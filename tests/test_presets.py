"""Presets end to end: each one runs offline on its family's built-in tiny model (in process, into a
temporary store), its specs differ from the Hub version only in the model; the method table; the page."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftcompare.core import methods
from peftcompare.service import analysis, presets
from peftcompare import cli
from peftcompare.service import execution  # noqa: E402
from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
ISSUE = {  # the table of issue 5
    "flan_t5_capacity": (("google/flan-t5-small", "google/flan-t5-base"), {"sst2", "samsum"},
                         {"prompt", "prefix", "lora", "zero_shot"}),
    "t5_small_imdb": (("t5-small",), {"imdb"}, {"full", "lora", "adalora", "ptuning"}),
    "dialogue_summaries": (("google/flan-t5-base",), {"dialogsum"}, {"zero_shot", "full", "lora"}),
    "gpt2_news": (("gpt2",), {"cnn_dailymail"}, {"prompt", "lora", "last_layers"}),
    "bert_sst2": (("bert-base-uncased",), {"sst2"}, {"full", "lora", "prefix", "bitfit"}),
    # issue 14: every zoo method at its ~300k budget, against LoRA r=8 and zero-shot
    "peft_zoo": (("google/flan-t5-small",), {"sst2", "samsum"}, {"zero_shot", "lora", *methods.zoo_budget()}),
}
FAMILY_MODEL = {"flan_t5_capacity": "builtin:tiny-t5", "t5_small_imdb": "builtin:tiny-t5",
                "dialogue_summaries": "builtin:tiny-t5", "gpt2_news": "builtin:tiny-gpt2",
                "bert_sst2": "builtin:tiny-bert", "peft_zoo": "builtin:tiny-t5"}


def test_presets_match_the_issue():
    assert set(presets.PRESETS) == set(ISSUE)
    for name, (hub_models, datasets, method_names) in ISSUE.items():
        p = presets.get_preset(name)
        assert p.models == hub_models and set(p.datasets) == datasets and set(p.method_names()) == method_names
        assert p.offline_model == FAMILY_MODEL[name]
    gpt2 = dict(presets.get_preset("gpt2_news").methods)
    assert gpt2["prompt"] == (70,) and gpt2["lora"] == (8,)
    assert dict(presets.get_preset("dialogue_summaries").methods)["lora"] == (32,)


@pytest.mark.parametrize("name", list(presets.PRESETS))
@pytest.mark.parametrize("quick", [False, True])
def test_hub_specs_differ_only_in_the_model(name, quick):
    """Offline only the model changes, and (outside the quick budget) the tiny model's recipe replaces the
    Hub learning rates and budget (issue 12; tests/test_offline_lesson.py checks the recipe itself)."""
    from peftcompare.core.spec import offline_recipe

    hub = presets.preset_specs(name, offline=False, quick=quick)
    off = presets.preset_specs(name, offline=True, quick=quick)
    assert {s.model_name for s in hub} == set(presets.get_preset(name).models)
    assert {s.model_name for s in off} == {presets.get_preset(name).offline_model}
    p = presets.get_preset(name)

    def as_offline(s):
        if quick:
            return s.replace(model_name="-").to_json()
        recipe = {k: v for k, v in offline_recipe(p.offline_model, s.task, s.method).items() if k not in p.spec}
        return s.replace(model_name="-", **recipe).to_json()
    assert {as_offline(s) for s in hub} == {s.replace(model_name="-").to_json() for s in off}


def test_preset_spec_details():
    imdb = presets.preset_specs("t5_small_imdb")
    assert {s.resolved().prompt_template for s in imdb} == {"Review: {text}"}
    assert {s.resolved().max_source_length for s in imdb} == {128}
    dialog = presets.preset_specs("dialogue_summaries")[0].resolved()
    assert dialog.prompt_template == "Summarize the following conversation.\n{text}\nSummary:"
    news = presets.preset_specs("gpt2_news")[0].resolved()
    assert (news.dataset, news.text_column, news.target_column) == ("cnn_dailymail", "article", "highlights")
    flan = presets.preset_specs("flan_t5_capacity")
    assert sorted({s.capacity for s in flan if s.method == "lora"}) == [4, 8, 16, 32]
    assert len(flan) == 2 * 2 * (1 + 4 + 4 + 4)
    with pytest.raises(ValueError, match="preset: unknown preset 'nope'"):
        presets.preset_specs("nope")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every preset, quick and offline, through train.execute into one store."""
    store = Store(tmp_path_factory.mktemp("presets-home"))
    for name in presets.PRESETS:
        for spec in presets.preset_specs(name, offline=True, quick=True):
            if store.find_completed(spec) is not None:  # presets share runs (zero-shot), as enqueue does
                continue
            run_id = store.create_run(spec.resolved(), status="running")
            assert execution.execute(spec, store, run_id) == 0, (name, spec.label(), store.get(run_id)["error"])
    return store


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_runs_end_to_end_offline(ran, name):
    runs = presets.preset_runs(ran, name)
    specs = presets.preset_specs(name, offline=True, quick=True)
    assert len(runs) == len(specs) and all(r["status"] == "completed" for r in runs)
    assert {r["model_name"] for r in runs} == {FAMILY_MODEL[name]}
    df = analysis.runs_frame(runs)
    for dataset, part in df.groupby("dataset"):
        metric = "f1" if dataset in ("sst2", "imdb") else "rougeL"
        table = analysis.method_table(part, metric)
        assert set(table["method"]) == set(presets.get_preset(name).method_names(quick=True))
    epochs = presets.epoch_frame(runs)
    trained = [m for m in presets.get_preset(name).method_names(quick=True) if m != "zero_shot"]
    assert set(epochs.loc[epochs["epoch"] > 0, "method"]) == set(trained)
    assert epochs.loc[epochs["epoch"] > 0, "train_loss"].notna().all()


def test_gpt2_preset_generates_summaries(ran):
    runs = [r for r in presets.preset_runs(ran, "gpt2_news") if r["method"] == "lora"]
    (run,) = runs
    preds = run["metrics"]["_predictions"]
    assert preds and all(not p["prediction"].startswith("summarize:") for p in preds)


def test_enqueue_preset_skips_stored_and_queued(ran, tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    out = presets.enqueue_preset(ran, "bert_sst2", offline=True, quick=True)
    assert out == {"run_ids": [], "skipped": 4, "total": 4}  # all four already completed
    store = Store(tmp_path)
    first = presets.enqueue_preset(store, "gpt2_news", offline=True, owner="me")
    assert len(first["run_ids"]) == 3 and {r["status"] for r in store.list_runs()} == {"queued"}
    assert {r["spec"].model_name for r in store.list_runs()} == {"builtin:tiny-gpt2"}
    assert presets.enqueue_preset(store, "gpt2_news", offline=True)["run_ids"] == []


def test_enqueue_preset_respects_public_mode(tmp_path, monkeypatch):
    store = Store(tmp_path)
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    with pytest.raises(ValueError, match="model_name: this public instance only trains"):
        presets.enqueue_preset(store, "gpt2_news", offline=True, owner="v")
    # offline the tiny model's recipe trains 500 examples (the limit) and evaluates all of them (over it)
    with pytest.raises(ValueError, match="eval_samples: at most"):
        presets.enqueue_preset(store, "dialogue_summaries", offline=True, owner="v")
    with pytest.raises(ValueError, match="method: full is turned off"):
        presets.enqueue_preset(store, "dialogue_summaries", offline=True, owner="v", quick=True)
    with pytest.raises(ValueError, match="8 runs exceed this public instance's limit"):
        presets.enqueue_preset(store, "flan_t5_capacity", offline=True, owner="v", quick=True)
    assert store.list_runs() == []  # nothing queued when any run is refused


def test_cli_preset(ran, capsys, tmp_path):
    assert cli.main(["preset", "bert_sst2", "--offline", "--quick", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("builtin:tiny-bert sst2") for line in lines)
    # everything stored already: nothing to run
    assert cli.main(["--home", str(ran.home), "preset", "bert_sst2", "--offline", "--quick"]) == 0
    assert "0 to run" in capsys.readouterr().out
    # offline without --offline: the built-in model, with a notice
    assert cli.main(["--home", str(tmp_path), "preset", "gpt2_news", "--dry_run"]) == 0
    captured = capsys.readouterr()
    assert "unreachable" in captured.err and "builtin:tiny-gpt2 cnn_dailymail" in captured.out


# -- the method table ------------------------------------------------------------------------------------
def _row(method, capacity, f1, params, runtime, epochs=2, memory=100.0, status="completed"):
    return {"run_id": f"{method}-{capacity}", "method": method, "capacity": capacity, "f1": f1,
            "trainable_params": params, "total_params": 1000, "train_runtime": runtime,
            "num_train_epochs": epochs, "peak_memory_mb": memory, "status": status}


def test_method_table_against_zero_shot_and_full():
    df = pd.DataFrame([_row("zero_shot", 0, 0.5, 0, 0.0, epochs=1), _row("full", 0, 0.8, 1000, 40.0),
                       _row("lora", 8, 0.76, 10, 10.0), _row("bitfit", 0, 0.6, 50, 8.0, memory=50.0),
                       _row("prompt", 20, 0.9, 5, 4.0, status="failed")])
    t = analysis.method_table(df, "f1").set_index("method")
    assert list(t.index) == ["full", "lora", "bitfit", "zero_shot"]  # best first; failed runs left out
    lora = t.loc["lora"]
    assert math.isclose(lora["vs_zero_shot"], 0.26) and math.isclose(lora["vs_zero_shot_pct"], 52.0)
    assert math.isclose(lora["vs_full"], -0.04) and math.isclose(lora["vs_full_pct"], -5.0)
    assert lora["param_reduction_x"] == 100.0 and lora["train_seconds_per_epoch"] == 5.0
    assert t.loc["bitfit", "peak_memory_mb"] == 50.0 and t.loc["full", "vs_full"] == 0.0
    assert pd.isna(t.loc["zero_shot", "param_reduction_x"])  # nothing trains: no ratio
    assert (t["metric_name"] == "f1").all()
    assert analysis.method_table(df.assign(status="failed"), "f1").empty


# -- the page --------------------------------------------------------------------------------------------
def test_presets_page(ran, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from peftcompare.service import jobs

    monkeypatch.setenv("PEFTCOMPARE_HOME", str(ran.home))
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store: started.append(store.home) or True)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.switch_page("pages/presets.py").run()
    assert not at.exception
    at.radio(key="ps_name").set_value("bert_sst2").run()
    at.toggle(key="ps_quick").set_value(True).run()
    assert "builtin:tiny-bert" in " ".join(m.value for m in at.markdown)
    assert at.dataframe  # the method table of the completed quick runs
    assert "4 runs" in at.button(key="ps_run").label
    at.button(key="ps_run").click().run()
    assert "0 runs queued, 4 already stored" in at.success[0].value and not started
    at.toggle(key="ps_quick").set_value(False).run()
    at.button(key="ps_run").click().run()
    assert "4 runs queued" in at.success[0].value and started == [ran.home]
    assert len([r for r in ran.list_runs(status=("queued",))]) == 4
    for r in ran.list_runs(status=("queued",)):  # leave the module's store as the other tests expect
        ran.request_cancel(r["run_id"])


# -- any local file with a column mapping ----------------------------------------------------------------
def test_local_files_with_column_mapping_and_template(tmp_path):
    import json

    from peftcompare.engine import data

    rows = [json.loads(line) for line in (data.tasks.SAMPLES_DIR / "sst2_train.jsonl").read_text().splitlines()]
    df = pd.DataFrame(rows).rename(columns={"sentence": "review", "label": "sentiment"})
    df["sentiment"] = df["sentiment"].map({0: "bad", 1: "good"})
    df.to_csv(tmp_path / "train.csv", index=False)
    df.head(12).to_parquet(tmp_path / "val.parquet")
    spec = RunSpec(model_name="builtin:tiny-bert", method="bitfit", train_file=str(tmp_path / "train.csv"),
                   validation_file=str(tmp_path / "val.parquet"), text_column="review", target_column="sentiment",
                   prompt_template="Movie: {text}", train_samples=8, eval_samples=6, num_train_epochs=1)
    task_data = data.load_task_data(spec.resolved())
    assert task_data.label_words == ["bad", "good"] and task_data.source == "file"
    store = Store(tmp_path / "home")
    run_id = store.create_run(spec.resolved(), status="running")
    assert execution.execute(spec, store, run_id) == 0, store.get(run_id)["error"]
    assert store.get(run_id)["spec"].prompt_template == "Movie: {text}"  # recorded with the run
