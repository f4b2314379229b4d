"""Issue 12, defect 10 (and the Presets part of 9): failed runs of a preset are shown with their reason and
a retry, the page follows the queue, Quick survives navigation, notes match the model family, tables
speak in labels and dashes, charts colour by method."""
from __future__ import annotations

import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from peftcompare.service import curves, jobs, presets
from peftcompare.core import methods
from peftcompare.service import execution  # noqa: E402
from peftcompare.service.store import Store

LONG_LINE = "RuntimeError: " + "the tiny model ran out of patience " * 12


@pytest.fixture(scope="module")
def bert_home(tmp_path_factory):
    """The quick, offline BERT preset: three runs trained for real, BitFit's run failed (its record as the
    worker leaves it, and a log with a very long line)."""
    store = Store(tmp_path_factory.mktemp("presets-page-home"))
    for spec in presets.preset_specs("bert_sst2", offline=True, quick=True):
        if spec.method == "bitfit":
            run_id = store.create_run(spec.resolved(), status="running")
            store.log_path(run_id).write_text("loading builtin:tiny-bert ...\n" + LONG_LINE + "\n")
            store.transition(run_id, "failed", ("running",), finished_at=time.time(),
                             error="the training process exited with status 1 without finishing")
        else:
            run_id = store.create_run(spec.resolved(), status="running")
            assert execution.execute(spec, store, run_id) == 0, store.get(run_id)["error"]
    return store


def page(home, monkeypatch, started: list | None = None) -> AppTest:
    monkeypatch.setenv("PEFTCOMPARE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    monkeypatch.setattr(jobs, "ensure_worker", lambda store: (started if started is not None else []).append(1))
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/presets.py").run()
    at.radio(key="ps_name").set_value("bert_sst2").run()
    at.toggle(key="ps_quick").set_value(True).run()
    assert not at.exception, at.exception
    return at


def test_a_failed_run_is_shown_with_its_reason_and_a_retry(bert_home, monkeypatch):
    started = []
    at = page(bert_home.home, monkeypatch, started)
    text = "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
    assert "failed" in text and "BitFit" in text
    assert "The training process exited with status 1 without finishing" in text
    (code,) = [c for c in at.get("code") if LONG_LINE.strip() in c.proto.code_text]
    assert code.proto.wrap_lines  # long log lines wrap instead of running off the right edge
    (failed,) = [r for r in bert_home.list_runs() if r["status"] == "failed"]
    retry = at.button(key=f"ps_retry_{failed['run_id']}")
    retry.click().run()
    assert not at.exception and started
    queued = bert_home.list_runs(status=("queued",))
    assert [r["method"] for r in queued] == ["bitfit"] and queued[0]["spec_hash"] == failed["spec_hash"]
    # the retry replaced the failure: the page lists the queued run, not the old error
    assert any("1 of this preset's runs are queued or running" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == f"ps_retry_{failed['run_id']}"]
    bert_home.transition(queued[0]["run_id"], "cancelled", ("queued",), error="cancelled by the user")
    at.run()
    assert any("cancelled" in m.value for m in at.markdown)  # the latest attempt is the one shown
    assert any("Cancelled by the user" in c.value for c in at.caption)


def test_run_groups():
    def run(i, h, status, t):
        return {"run_id": f"r{i}", "spec_hash": h, "status": status, "created_at": t}

    runs = [run(1, "a", "failed", 1), run(2, "a", "completed", 2), run(3, "b", "failed", 3),
            run(4, "b", "interrupted", 4), run(5, "c", "cancelled", 5), run(6, "c", "queued", 6),
            run(7, "d", "running", 7)]
    g = presets.run_groups(runs)
    assert [r["run_id"] for r in g["problems"]] == ["r4"]  # a: succeeded later; b: the latest; c: retried
    assert [r["run_id"] for r in g["active"]] == ["r6", "r7"] and [r["run_id"] for r in g["completed"]] == ["r2"]


def test_quick_and_the_preset_survive_navigation(bert_home, monkeypatch):
    at = page(bert_home.home, monkeypatch)
    assert "4 runs" in at.button(key="ps_run").label
    at.switch_page("pages/curves.py").run()
    at.switch_page("pages/presets.py").run()
    assert not at.exception
    assert at.toggle(key="ps_quick").value is True and at.radio(key="ps_name").value == "bert_sst2"
    at.toggle(key="ps_quick").set_value(False).run()
    at.switch_page("pages/adapters.py").run()
    at.switch_page("pages/presets.py").run()
    assert at.toggle(key="ps_quick").value is False


def test_notes_tables_and_colours(bert_home, monkeypatch):
    at = page(bert_home.home, monkeypatch)
    captions = [c.value for c in at.caption]
    assert not [c for c in captions if "T5" in c or "encoder-decoder" in c], captions  # BERT: no T5 notes
    methods_table, results = at.dataframe[0], at.dataframe[1]
    assert methods_table.proto.placeholder == "—" and results.proto.placeholder == "—"
    assert methods_table.value.loc[methods_table.value["method"] == "BitFit", "knob"].isna().all()
    assert json.loads(methods_table.proto.columns)["knob"]["label"] == "Capacity knob"
    shown = results.value
    assert set(shown["method"]) == {"Full fine-tuning", "LoRA 8", "Prefix-Tuning 20"}
    cfg = json.loads(results.proto.columns)
    assert cfg["metric"]["label"] == "F1" and cfg["trainable_params"]["label"] == "Trainable params"
    assert "metric_name" not in shown and "total_params" not in shown
    (chart,) = at.get("vega_lite_chart")
    enc = json.loads(chart.proto.spec)["spec"]["layer"][0]["encoding"]  # the lines (points are the second layer)
    titles = {methods.get_method(m).title: c for m, c in curves.method_colors().items()}
    assert dict(zip(enc["color"]["scale"]["domain"], enc["color"]["scale"]["range"])) == titles
    # a T5 preset keeps its T5 notes
    at.radio(key="ps_name").set_value("flan_t5_capacity").run()
    assert any("encoder-decoder" in c.value for c in at.caption)
