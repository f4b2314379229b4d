"""Issue 15, points 3 and 7: the experiment report (one self-contained HTML file, offline), and the Curves page
with intervals, seed counts, paired-test marks and the report button."""
from __future__ import annotations

import json
import os
import re

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from peftcompare.service import report, summary
from peftcompare.service.store import Store
from pipeline_helpers import cli, run_in_process, tiny_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
COMMON = dict(precision="fp32", eval_samples=24, learning_rate=2e-2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Zero-shot, LoRA 4 over 3 seeds, prompt tuning over 1 seed, full fine-tuning over 1 seed."""
    store = Store(tmp_path_factory.mktemp("report-home"))
    runs = [run_in_process(store, tiny_spec(method="zero_shot", **COMMON))]
    runs += [run_in_process(store, tiny_spec(method="lora", capacity=4, seed=s, **COMMON)) for s in (1, 2, 3)]
    runs += [run_in_process(store, tiny_spec(method="prompt", capacity=4, seed=1, **COMMON)),
             run_in_process(store, tiny_spec(method="full", seed=1, **{**COMMON, "learning_rate": 2e-3}))]
    return store, runs


def test_report_is_one_offline_file_with_protocol_curves_table_and_examples(lab, tmp_path):
    store, runs = lab
    out = tmp_path / "report.html"
    proc = cli("report", "--task", "classification", "--out", str(out), home=store.home, check=True)
    assert proc.stdout.strip() == str(out)
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html
    # nothing fetched when it opens: no script, no external stylesheet, image or font
    assert "<script" not in html.lower() and not re.findall(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", html)
    assert "@import" not in html and "url(http" not in html
    # the protocol
    for needle in ("dev split carved from the training data", "validation split evaluated once",
                   runs[1]["data_fingerprint"], runs[1]["model_fingerprint"], "1 epoch (", "dev examples",
                   "Student t-intervals", runs[1]["versions"]["torch"]):
        assert needle in html, needle
    rows = summary.summarize(store.list_runs(), "classification")
    lora = next(r for r in rows if r["method"] == "lora")
    zs = next(r for r in rows if r["method"] == "zero_shot")
    full = next(r for r in rows if r["method"] == "full")
    assert lora["n_seeds"] == 3 and lora["ci_low"] is not None
    row = re.search(r"<tr><td>LoRA 4</td>(.*?)</tr>", html).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0] == f"{lora['mean']:.4f}" and cells[1] == f"[{lora['ci_low']:.4f}, {lora['ci_high']:.4f}]"
    assert cells[2] == "3" and cells[4] == "dev"
    assert cells[7] == f"{lora['mean'] - zs['mean']:.4f}" and cells[8] == f"{lora['mean'] - full['mean']:.4f}"
    assert "p=" in html and "only 1 seed" in html  # paired tests between rows; prompt tuning's one seed flagged
    # every run was scored on the same validation examples, and the report says so with one fingerprint
    prints = re.search(r"validation examples fingerprint</td><td>(.*?)</td>", html).group(1)
    assert prints.count("<code>") == 1 and f"({len(runs)})" in prints
    # a few examples side by side, from the stored answers
    examples = html.split("<h2>Examples</h2>")[1].split("<h2>")[0]
    assert examples.count("<tr>") >= 4 and ("negative" in examples or "positive" in examples)
    assert "Prompt-Tuning 4" in examples


def test_the_original_protocol_is_labelled_as_such(tmp_path):
    store = Store(tmp_path)
    for seed in (1, 2):
        run_in_process(store, tiny_spec(method="lora", capacity=4, seed=seed, selection="validation", **COMMON))
    html = report.build_for_store(store, "classification")
    assert "the original experiment" in html and "optimistic" in html and "dev split carved" not in html
    (row,) = summary.summarize(store.list_runs())
    assert row["selected_on"] == "validation" and row["warning"].startswith("only 2 seeds")
    bad = cli("report", "--task", "classification", "--out", str(tmp_path / "no" / "r.html"), home=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: out: the folder of {tmp_path / 'no' / 'r.html'} does not exist"]


def test_curves_page_shows_intervals_seeds_tests_and_the_report(lab, monkeypatch):
    store, runs = lab
    monkeypatch.setenv("PEFTCOMPARE_HOME", str(store.home))
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/curves.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cv_spread").value == "ci"
    table = at.dataframe[-1].value
    lora = table[table["method"] == "LoRA"].iloc[0]
    rows = summary.summarize(store.list_runs(), "classification")
    want = next(r for r in rows if r["method"] == "lora")
    assert (lora["n"], lora["ci_low"], lora["ci_high"]) == (3, pytest.approx(want["ci_low"]),
                                                             pytest.approx(want["ci_high"]))
    assert lora["selected_on"] == "dev" and lora["learning_rate"] == "0.02"
    marks = [v for v in table["vs_next"] if v]
    assert marks and all(("p=" in v) for v in marks)
    assert any("Fewer than 3 seeds" in w.value and "Prompt-Tuning 4 (n=1)" in w.value for w in at.warning)
    assert any("Student t-interval" in c.value for c in at.caption)
    chart = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert any(t.get("title") == "95 % CI low (t)" for layer in chart["layer"]
               for t in (layer.get("encoding", {}).get("tooltip") or []) if isinstance(t, dict))
    button = at.get("download_button")
    assert any("Experiment report" in json.dumps(str(b.proto)) for b in button)
    html = report.build_for_store(store, "classification")  # what the button serves
    assert "<svg" in html and "LoRA 4" in html
