"""The disagreement finder: the ranking on hand-made answers, and on builtin:tiny-t5 with real adapters
trained here: scores equal evaluation's (and the runs' recorded metrics), the cache, the CSV, the CLI verb
and the Compare page's second mode (AppTest)."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP, stop_processes
from peftcompare.engine import adapters
from peftcompare.engine import data as data_mod
from peftcompare.service import disagreements as dis
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import compare as infer
from peftcompare.service.store import Store
from pipeline_helpers import cli, run_in_process, tiny_spec

EVAL = 24  # the runs' eval set: the first 24 validation examples


# -- the pure ranking ---------------------------------------------------------------------------------------
def test_classification_disagreements_ranked_by_probability_gap():
    outputs = [["pos", "pos", "neg", "neg", "pos"],  # zero-shot
               ["pos", "neg", "neg", "pos", "neg"],
               ["pos", "neg", "neg", "pos", "pos"]]
    dists = [[[0.1, 0.9], [0.4, 0.6], [0.9, 0.1], [0.55, 0.45], [0.2, 0.8]],
             [[0.3, 0.7], [0.9, 0.1], [0.6, 0.4], [0.45, 0.55], [0.7, 0.3]],
             [[0.2, 0.8], [0.6, 0.4], [0.99, 0.01], [0.4, 0.6], [0.4, 0.6]]]
    flags = dis.disagreement("classification", outputs, dists)
    assert [f["disagree"] for f in flags] == [False, True, False, True, True]
    assert [round(f["gap"], 6) for f in flags] == [0.2, 0.5, 0.39, 0.15, 0.5]  # agreeing example 2: gap, no flag
    assert dis.rank_disagreements("classification", outputs, dists) == [1, 4, 3]  # ties: lower index first
    # three labels: the gap is the largest spread of any one label
    three = dis.disagreement("classification", [["a"], ["b"]], [[[0.5, 0.3, 0.2]], [[0.4, 0.2, 0.4]]])
    assert three[0]["disagree"] and three[0]["gap"] == pytest.approx(0.2)
    assert dis.rank_disagreements("classification", [["a", "b"]], [[[1, 0], [0, 1]]]) == []  # one column
    with pytest.raises(ValueError, match="distributions"):
        dis.rank_disagreements("classification", outputs)
    with pytest.raises(ValueError, match="one answer per example"):
        dis.rank_disagreements("classification", [["a"], ["a", "b"]], [[[1, 0]], [[1, 0], [0, 1]]])


def test_summarization_disagreements_ranked_by_rouge_spread():
    outputs = [["anna meets ben", "they eat", "x", "same  words"],
               ["anna meets ben", "lunch at noon", "y", "same words"],  # whitespace is no disagreement
               ["ben meets anna", "they eat", "z", "same words\n"]]
    rouge = [[0.9, 0.2, 0.0, 0.5], [0.9, 0.6, 0.0, 0.5], [0.4, 0.2, 0.0, 0.5]]
    flags = dis.disagreement("summarization", outputs, rouge_l=rouge)
    assert [f["disagree"] for f in flags] == [True, True, True, False]
    assert dis.rank_disagreements("summarization", outputs, rouge_l=rouge) == [0, 1, 2]
    assert flags[2]["gap"] == 0.0  # different texts with the same ROUGE-L still disagree, ranked last


def test_rouge_l_each_is_what_evaluation_averages():
    preds = ["Anna and Ben meet for lunch.", "", "They will meet at noon. Ben is late!"]
    refs = ["Anna and Ben will have lunch at 12:30.", "Tom calls.", "Ben is late for the meeting at noon."]
    each = dis.rouge_l_each(preds, refs)
    assert sum(each) / len(each) == pytest.approx(eval_mod.rouge(preds, refs)["rougeL"], abs=1e-12)
    assert each[1] == 0.0 and 0 < each[0] < 1


# -- on the tiny model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("dis-home"))
    fp32 = dict(precision="fp32", eval_samples=EVAL)
    runs = {"zero": run_in_process(store, tiny_spec(method="zero_shot", **fp32)),
            "lora4": run_in_process(store, tiny_spec(method="lora", capacity=4, seed=1, **fp32)),
            "lora8": run_in_process(store, tiny_spec(method="lora", capacity=8, seed=2, learning_rate=2e-2, **fp32)),
            "prompt": run_in_process(store, tiny_spec(method="prompt", capacity=4, seed=1, learning_rate=2e-2,
                                                      **fp32)),
            "summ": run_in_process(store, tiny_spec(task="summarization", method="lora", capacity=4,
                                                    precision="fp32"))}
    for method in ("ia3", "prefix", "bitfit"):  # the engine's other paths: injected, wrapped, swapped in
        runs[method] = run_in_process(store, tiny_spec(method=method, capacity=4, seed=1, learning_rate=2e-2,
                                                       **fp32))
    return store, {k: r["run_id"] for k, r in runs.items()}, runs


@pytest.fixture(scope="module")
def engine(lab):
    return infer.CompareEngine(lab[0], device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def found(lab, engine):
    _, ids, _ = lab
    seen = []
    # the models themselves (stored=False): every run stored its answers to these examples, which find() would
    # otherwise read (tests/test_significance.py checks those against this result)
    result = dis.find(engine, [ids["lora4"], ids["lora8"], ids["prompt"]], EVAL,
                      progress=lambda done, total: seen.append((done, total)), stored=False)
    return result, seen


def test_scores_equal_the_runs_recorded_metrics(lab, found):
    _, ids, runs = lab
    result, seen = found
    assert not result["cached"] and result["n"] == EVAL and result["task"] == "classification"
    assert [c["key"] for c in result["columns"]] == [infer.BASE, ids["lora4"], ids["lora8"], ids["prompt"]]
    # zero-shot is the untouched base model: the zero-shot run's numbers, as the adapters' are theirs
    for c, run in zip(result["columns"], [runs["zero"], runs["lora4"], runs["lora8"], runs["prompt"]]):
        assert run["metrics"]["eval_samples"] == EVAL
        for k in ("accuracy", "f1"):
            assert c["scores"][k] == pytest.approx(run["metrics"][k], abs=1e-9), (c["label"], k)
        assert c["scores"]["mean_probability"] == pytest.approx(run["metrics"]["mean_probability"], abs=1e-5)
    totals = {t for _, t in seen}
    assert totals == {4 * EVAL} and seen[-1][0] == 4 * EVAL and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) > 2  # batched: several batches, each reported


def test_scores_equal_evaluate_on_other_examples(lab, engine):
    """N below the eval set: the column is what evaluate.evaluate gives for the adapter on those examples."""
    store, ids, _ = lab
    result = dis.find(engine, [ids["lora4"]], 10, use_cache=False)
    rec = adapters.read_adapter(store.adapter_path(ids["lora4"]))
    spec = rec["_spec"]
    from peftcompare.engine.models import load_model

    loaded = load_model(spec.model_name)
    examples = data_mod.load_task_data(spec.replace(eval_samples=10)).validation
    feats = data_mod.tokenized(spec, loaded.family, loaded.tokenizer, examples, with_targets=False)
    want = eval_mod.evaluate(adapters.load_adapter_model(store.adapter_path(ids["lora4"])), loaded.family,
                             loaded.tokenizer, spec, examples, feats, rec["label_words"])
    got = result["columns"][1]["scores"]
    assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["f1"] == pytest.approx(want["f1"])
    assert got["mean_probability"] == pytest.approx(want["mean_probability"], abs=1e-5)
    assert [r["outputs"][1] for r in result["examples"][:8]] == [p["prediction"] for p in want["_predictions"]]


def test_every_path_over_many_texts(lab, engine):
    """compare_many (several texts per batch) answers as compare() does one text at a time, on every path
    of the engine; the other methods' scores are their runs' recorded metrics too."""
    store, ids, runs = lab
    names = ["lora4", "lora8", "prompt", "ia3", "prefix", "bitfit"]
    spec = adapters.read_adapter(store.adapter_path(ids["lora4"]))["_spec"]
    texts = [t for t, _ in dis.validation_examples(spec)[:5]]
    many = engine.compare_many(texts, [ids[n] for n in names], rows_per_batch=14)  # 2 texts per LoRA batch
    for i, text in enumerate(texts):
        one = engine.compare(text, [ids[n] for n in names])["columns"]
        for a, b in zip(many["columns"], one):
            assert a["outputs"][i] == b["output"] and a["probabilities"][i] == pytest.approx(b["probability"],
                                                                                              abs=1e-5), a["label"]
            assert sum(a["distributions"][i]) == pytest.approx(1.0)
    peft = infer.CompareEngine(store, device="cpu", precision="fp32", lora_backend="peft")
    other = peft.compare_many(texts, [ids["lora4"], ids["lora8"]], rows_per_batch=6)
    for a, b in zip(other["columns"], many["columns"]):
        assert a["outputs"] == b["outputs"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    result = dis.find(engine, [ids[n] for n in ("ia3", "prefix", "bitfit")], EVAL, stored=False)
    for c, n in zip(result["columns"][1:], ("ia3", "prefix", "bitfit")):
        for k in ("accuracy", "f1"):
            assert c["scores"][k] == pytest.approx(runs[n]["metrics"][k], abs=1e-9), (n, k)


def test_ranking_of_the_real_answers(found):
    result, _ = found
    rows = result["examples"]
    ranked = result["disagreements"]
    assert ranked, "the adapters agree with zero-shot everywhere: the ranking would prove nothing"
    outputs = [[r["outputs"][j] for r in rows] for j in range(len(result["columns"]))]
    assert ranked == dis.rank_disagreements("classification", outputs, _dists(result))
    for r in rows:
        assert r["disagree"] == (len(set(r["outputs"])) > 1) == (r["index"] in ranked)
        assert r["correct"] == [o == r["reference"] for o in r["outputs"]]
    gaps = [rows[i]["gap"] for i in ranked]
    assert gaps == sorted(gaps, reverse=True) and all(0 < g <= 1 for g in gaps)


def _dists(result):
    """Per-column label distributions rebuilt from the top label and its probability (two labels)."""
    words = result["label_words"]
    assert len(words) == 2
    return [[[r["probabilities"][j] if w == r["outputs"][j] else 1 - r["probabilities"][j] for w in words]
             for r in result["examples"]] for j in range(len(result["columns"]))]


def test_second_call_reads_the_cache(lab, engine, monkeypatch):
    store, ids, _ = lab
    runs = [ids["lora4"], ids["lora8"]]
    calls = []
    real = engine.compare_many
    monkeypatch.setattr(engine, "compare_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = dis.find(engine, runs, 12, stored=False)  # the disk cache of model runs (stored answers aside)
    again = dis.find(engine, runs, 12, stored=False)
    assert len(calls) == 1 and not first["cached"] and again["cached"]
    assert again["columns"] == first["columns"] and again["examples"] == first["examples"]
    path = store.cache_dir / dis.CACHE_SUBDIR / f"{first['key']}.json"
    assert path.is_file()
    # a fresh engine (a new process, the CLI) answers from the disk without loading the model at all
    fresh = infer.CompareEngine(store, device="cpu", precision="fp32")
    assert dis.find(fresh, runs, 12, stored=False)["cached"] and fresh.loaded is None
    assert dis.lookup(fresh, runs, 12, stored=False)["key"] == first["key"]
    # another N, other adapters, a changed adapter file or a torn cache file: computed again
    assert dis.lookup(fresh, runs, 11, stored=False) is None and dis.lookup(fresh, runs[:1], 12, stored=False) is None
    weights = store.adapter_path(ids["lora8"]) / "adapter_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dis.lookup(fresh, runs, 12, stored=False) is None
    path.write_text("{ torn")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dis.lookup(fresh, runs, 12, stored=False) is None
    assert not dis.find(engine, runs, 12, stored=False)["cached"] and len(calls) == 2
    assert dis.lookup(fresh, runs, 12, stored=False)["key"] == first["key"]  # rewritten
    # N is capped by the set's size, so 10**6 and the size are one key
    size = len(dis.validation_examples(adapters.read_adapter(store.adapter_path(runs[0]))["_spec"]))
    assert dis.prepare(fresh, runs, 10**6)["key"] == dis.prepare(fresh, runs, size)["key"]
    with pytest.raises(ValueError, match="n: choose at least one"):
        dis.prepare(fresh, runs, 0)


def test_csv_has_one_row_per_example(lab, found):
    _, ids, _ = lab
    result, _ = found
    text = dis.to_csv(result)
    rows = list(csv.reader(io.StringIO(text)))
    names = ["zero-shot", ids["lora4"], ids["lora8"], ids["prompt"]]
    per = [f"{n} {p}" for n in names for p in ("prediction", "probability")]
    assert rows[0] == ["index", "text", "reference", *per, "disagree", "probability gap"]
    assert len(rows) == 1 + EVAL
    for row, ex in zip(rows[1:], result["examples"]):
        assert row[1] == ex["text"] and row[2] == ex["reference"] and row[3::2][:4] == ex["outputs"]
        assert [float(v) for v in row[4:11:2]] == pytest.approx(ex["probabilities"], abs=1e-6)
        assert row[-2] == str(ex["disagree"]) and float(row[-1]) == pytest.approx(ex["gap"], abs=1e-6)


def test_summarization_scores_and_spread(lab, engine):
    store, ids, runs = lab
    n = runs["summ"]["metrics"]["eval_samples"]
    result = dis.find(engine, [ids["summ"]], n)
    zs, lora = result["columns"]
    assert lora["scores"]["rougeL"] == pytest.approx(runs["summ"]["metrics"]["rougeL"], abs=1e-9)
    each = [r["rougeL"][1] for r in result["examples"]]
    assert sum(each) / n == pytest.approx(lora["scores"]["rougeL"], abs=1e-12)
    for r in result["examples"]:
        assert r["gap"] == pytest.approx(max(r["rougeL"]) - min(r["rougeL"]))
    assert dis.csv_header(result)[-4:] == [f"{ids['summ']} summary", f"{ids['summ']} ROUGE-L", "disagree",
                                           "ROUGE-L spread"]
    cols = range(len(result["columns"]))
    assert result["disagreements"] == dis.rank_disagreements(
        "summarization", [[r["outputs"][j] for r in result["examples"]] for j in cols],
        rouge_l=[[r["rougeL"][j] for r in result["examples"]] for j in cols])
    assert f"{len(result['disagreements'])} of {n} examples disagree" in dis.report(result)


def test_cli_verb(lab, tmp_path):
    store, ids, _ = lab
    out = tmp_path / "dis.csv"
    proc = cli("disagreements", ids["lora4"], ids["lora8"], "--n", "16", "--precision", "fp32", "--csv", str(out),
               "--json", "--no_cache", home=store.home, check=True)
    result = json.loads(proc.stdout)
    assert result["n"] == 16 and not result["cached"] and len(result["columns"]) == 3
    same = dis.find(infer.CompareEngine(store, device="cpu", precision="fp32"), [ids["lora4"], ids["lora8"]], 16,
                    stored=False)
    assert same["cached"]  # the CLI wrote the cache this process reads
    assert [c["scores"] for c in same["columns"]] == [c["scores"] for c in result["columns"]]
    assert len(list(csv.reader(io.StringIO(out.read_text())))) == 17
    text = dis.report(same, top=3)
    assert "accuracy" in text and f"{len(same['disagreements'])} of 16 examples disagree" in text
    bad = cli("disagreements", "20990101-000000-nope", "--n", "5", home=store.home)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: run_id: no run 20990101-000000-nope"]


def test_cli_refusals_are_one_line(lab, capsys):
    from peftcompare import cli as cli_mod

    store, ids, _ = lab
    home = ["--home", str(store.home), "disagreements"]
    cases = {(ids["zero"],): "has no adapter", (ids["lora4"], "--n", "0"): "n: choose at least one example",
             (ids["lora4"], ids["summ"]): "different tasks",
             (ids["lora4"], "--task", "summarization"): "different tasks",
             (ids["lora4"], "--csv", str(store.home / "no" / "such" / "dir.csv")): "csv: the folder"}
    for argv, message in cases.items():
        assert cli_mod.main(home + list(argv)) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)


def test_stored_answers_are_the_models_answers_and_no_model_runs(lab, found, monkeypatch):
    """Every run stored its evaluation answers: the finder builds its result from them (no model loads) and it
    is what running the models gives; where one column lacks them for an example, nothing is made up."""
    import sqlite3

    store, ids, _ = lab
    result, _ = found
    chosen = [ids["lora4"], ids["lora8"], ids["prompt"]]
    fresh = infer.CompareEngine(store, device="cpu", precision="fp32")
    monkeypatch.setattr(fresh, "compare_many", lambda *a, **k: pytest.fail("a model ran"))
    stored = dis.find(fresh, chosen, EVAL)
    assert stored["source"] == "stored" and fresh.loaded is None and not stored["cached"]
    assert [r["outputs"] for r in stored["examples"]] == [r["outputs"] for r in result["examples"]]
    for a, b in zip(stored["columns"], result["columns"]):
        assert a["key"] == b["key"] and a["scores"]["f1"] == pytest.approx(b["scores"]["f1"], abs=1e-12)
    for a, b in zip(stored["examples"], result["examples"]):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    assert set(stored["disagreements"]) == set(result["disagreements"])
    assert "stored evaluation answers" in dis.report(stored)
    # one example past what the runs evaluated, or a column without stored answers: no stored result
    assert dis.lookup(fresh, chosen, EVAL + 1) is None
    saved = store.examples(ids["lora8"])
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("DELETE FROM examples WHERE run_id=?", (ids["lora8"],))
    try:
        assert dis.from_stored(fresh, dis.prepare(fresh, chosen, EVAL)) is None
    finally:
        store.put_examples(ids["lora8"], "validation", saved)
    assert dis.from_stored(fresh, dis.prepare(fresh, chosen, EVAL)) is not None


# -- the Compare page's second mode ---------------------------------------------------------------------------
def test_compare_page_across_the_validation_set(lab, monkeypatch):
    store, ids, _ = lab
    for k, v in {"PEFTCOMPARE_HOME": str(store.home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    size = len(dis.validation_examples(adapters.read_adapter(store.adapter_path(ids["lora4"]))["_spec"]))
    try:
        at = AppTest.from_file(str(APP), default_timeout=120).run()
        at.switch_page("pages/compare.py").run()
        at.multiselect(key="cmp_runs").set_value([ids["lora4"], ids["lora8"]]).run()
        at.radio(key="cmp_mode").set_value("Across the validation set").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert at.number_input(key="cmp_n").value == min(200, size)  # default 200, capped by the set
        assert not at.dataframe and not at.download_button  # nothing run yet
        at.number_input(key="cmp_n").set_value(30).run()
        at.button(key="cmp_dis_go").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any(p.value == 100 and "90 answers in" in p.text for p in at.get("progress"))
        result = next(iter(at.session_state["cmp_dis_memory"].values()))
        assert result["n"] == 30
        scores = at.dataframe[0].value
        assert list(scores["column"]) == [c["label"] for c in result["columns"]]
        assert list(scores["accuracy"]) == pytest.approx([c["scores"]["accuracy"] for c in result["columns"]])
        assert list(scores.columns) == ["column", "run", "accuracy", "F1"]
        ranked = result["disagreements"]
        assert ranked and len(at.expander) == min(len(ranked), 25)
        assert at.expander[0].label.startswith(f"Example {ranked[0]} — probability gap")
        assert at.download_button(key="cmp_dis_csv").label == "Download CSV"
        # a disagreement opens in the one-example view, compared at once
        at.button(key=f"cmp_open_{ranked[0]}").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert at.radio(key="cmp_mode").value == "One example"
        assert at.number_input(key="cmp_index").value == ranked[0]
        shown = at.session_state["cmp_result"]
        row = result["examples"][ranked[0]]
        assert shown["text"] == row["text"].strip() and shown["reference"] == row["reference"]
        assert [c["output"] for c in shown["columns"]] == row["outputs"]
        assert len([c for c in at.caption if "the reference" in c.value]) == 3
        # a new session shows the result at once, from the disk cache
        again = AppTest.from_file(str(APP), default_timeout=120).run()
        again.switch_page("pages/compare.py").run()
        again.multiselect(key="cmp_runs").set_value([ids["lora4"], ids["lora8"]]).run()
        again.radio(key="cmp_mode").set_value("Across the validation set").run()
        again.number_input(key="cmp_n").set_value(30).run()
        assert not again.exception
        assert any("from the cache" in c.value for c in again.caption) and again.dataframe
        assert len(again.expander) == min(len(ranked), 25)
    finally:
        stop_processes(store.home)
