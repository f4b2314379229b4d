"""Issue 12, defect 7: the Curves page. The Pareto front counts zero-shot and full fine-tuning as points,
each method has one colour on every chart (curves, loss overlays, Presets, the CLI PNG), the loss overlay
shows every completed run readably, and a selection without zero-shot gets it in one click."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP, wait_for
from pipeline_helpers import run_in_process, tiny_spec
from peftcompare.service import analysis, curves, plotting
from peftcompare.core import methods
from peftcompare.service.store import Store

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def agg_of(rows) -> pd.DataFrame:
    runs = [{"run_id": f"{m}-{c}", "task": "classification", "model_name": "m", "dataset": "sst2", "method": m,
             "capacity": c, "seed": 1, "status": "completed", "trainable_params": p, "f1": s}
            for m, c, p, s in rows]
    return analysis.aggregate(pd.DataFrame(runs), "f1")


def front_of(agg) -> set[str]:
    flags = analysis.pareto_front(agg)
    return set(agg.loc[flags, "run_ids"])


def chart_layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def layer_data(spec: dict, layer: dict) -> pd.DataFrame:
    name = (layer.get("data") or spec.get("data"))["name"]
    return pd.DataFrame(spec["datasets"][name])


def colour_map(encoding: dict) -> dict[str, str]:
    scale = encoding["color"]["scale"]
    return dict(zip(scale["domain"], scale["range"]))


TITLE_COLOURS = {methods.get_method(m).title: c for m, c in curves.method_colors().items()}


# -- the Pareto front ----------------------------------------------------------------------------------------
def test_zero_shot_and_full_are_points_of_the_front():
    # zero-shot (0 params, 0.70) beats prompt (640, 0.56) and ia3 (900, 0.66): neither is on the front
    agg = agg_of([("zero_shot", 0, 0, 0.70), ("prompt", 10, 640, 0.56), ("ia3", 0, 900, 0.66),
                  ("lora", 8, 12288, 0.72), ("full", 0, 10**6, 0.71)])
    assert front_of(agg) == {"zero_shot-0", "lora-8"}  # full has more parameters and a lower score than lora 8
    best_full = agg_of([("zero_shot", 0, 0, 0.70), ("lora", 8, 12288, 0.72), ("full", 0, 10**6, 0.90)])
    assert front_of(best_full) == {"zero_shot-0", "lora-8", "full-0"}
    # equal scores: the point with fewer parameters beats it (<= parameters and >= score, better in one)
    tie = agg_of([("zero_shot", 0, 0, 0.60), ("lora", 4, 6144, 0.60)])
    assert front_of(tie) == {"zero_shot-0"}
    # a zero-shot record without a parameter count still has 0 trainable parameters
    no_count = agg_of([("zero_shot", 0, None, 0.70), ("prompt", 10, 640, 0.56)])
    assert front_of(no_count) == {"zero_shot-0"}


def test_the_chart_rings_only_points_no_reference_beats():
    agg = agg_of([("zero_shot", 0, 0, 0.70), ("prompt", 10, 640, 0.56), ("lora", 4, 6144, 0.65),
                  ("lora", 8, 12288, 0.72)])
    spec = curves.efficiency_chart(agg, "f1").to_dict()  # the front of every point by default
    (ring,) = [lay for lay in spec["layer"] if lay["mark"].get("shape") == "circle"]
    assert list(layer_data(spec, ring)["run_ids"]) == ["lora-8"]  # prompt 10 and LoRA 4 are beaten by zero-shot
    (label,) = [lay for lay in spec["layer"] if lay["mark"].get("type") == "text"]
    refs = layer_data(spec, label)
    assert list(refs["ref_label"]) == ["Zero-shot 0.700 (on the front)"]
    assert list(refs["ref_color"]) == [curves.method_color("zero_shot")]
    # nothing beats zero-shot: no ring at all
    beaten = agg_of([("zero_shot", 0, 0, 0.90), ("prompt", 10, 640, 0.56), ("lora", 8, 12288, 0.72)])
    spec = chart_layers(curves.efficiency_chart(beaten, "f1"))
    assert not [lay for lay in spec if isinstance(lay["mark"], dict) and lay["mark"].get("shape") == "circle"]


# -- one colour per method -------------------------------------------------------------------------------------
def test_one_colour_per_method_on_every_chart(tmp_path):
    assert len(set(curves.method_colors().values())) == len(curves.method_colors()) == len(methods.METHODS)
    agg = agg_of([("zero_shot", 0, 0, 0.5), ("prompt", 10, 640, 0.56), ("lora", 8, 12288, 0.72),
                  ("ia3", 0, 900, 0.6)])
    eff = chart_layers(curves.efficiency_chart(agg, "f1"))
    assert colour_map(eff[0]["encoding"]) == TITLE_COLOURS
    steps = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 4, "step": [1, 2, 3, 4] * 2, "epoch": [.25, .5, .75, 1] * 2,
                          "loss": [4, 3, 2, 1.5, 5, 4, 3.5, 3]})
    overlay = curves.loss_overlay(steps, {"a": "lora", "b": "prompt"}).to_dict()
    assert colour_map(overlay["layer"][-1]["encoding"]) == TITLE_COLOURS
    ep = pd.DataFrame({"label": ["LoRA 8", "LoRA 4", "BitFit"], "method": ["lora", "lora", "bitfit"],
                       "capacity": [8, 4, 0], "epoch": [1, 1, 1], "train_loss": [1.0, 1.5, 2.0],
                       "metric": [0.5, 0.4, 0.6]})
    lines, points = curves.epoch_chart(ep, "f1").to_dict()["spec"]["layer"]
    assert colour_map(lines["encoding"]) == colour_map(points["encoding"]) == TITLE_COLOURS
    # two runs of one method are told apart by their dash (capacity; a method without a knob: "—"), drawn as
    # dashes in the legend (a line layer without points) and the epochs are whole numbers, each once
    dash = lines["encoding"]["strokeDash"]
    assert dash["title"] == "Capacity" and dash["sort"] == ["4", "8", "—"]
    assert lines["mark"]["type"] == "line" and "point" not in lines["mark"] and "strokeDash" not in points["encoding"]
    assert lines["encoding"]["x"]["axis"]["values"] == [1]
    # the per-epoch scores say which split they were taken on (dev under the default protocol)
    names = lambda spec: {r["curve"] for r in next(iter(spec["datasets"].values()))}  # noqa: E731
    assert names(curves.epoch_chart(ep, "f1").to_dict()) == {"training loss", "evaluation F1"}
    assert names(curves.epoch_chart(ep.assign(split="dev"), "f1").to_dict()) == {"training loss", "dev F1"}
    # the CLI's PNG: the same colour per method, the reference lines included
    df = pd.DataFrame([{"run_id": r, "task": "classification", "model_name": "m", "dataset": "sst2", "method": m,
                        "capacity": c, "seed": 1, "status": "completed", "trainable_params": p, "f1": s}
                       for r, m, c, p, s in [("z", "zero_shot", 0, 0, .5), ("l4", "lora", 4, 6144, .6),
                                             ("l8", "lora", 8, 12288, .7), ("p", "prompt", 10, 640, .55)]])
    import matplotlib.colors as mcolors

    fig = plotting.curve_figure(df, "classification", "f1", x="trainable_params")
    lines = {ln.get_label().split(" (")[0].split(":")[0]: mcolors.to_hex(ln.get_color()) for ln in fig.axes[0].lines}
    assert lines == {"LoRA": curves.method_color("lora"), "Prompt-Tuning": curves.method_color("prompt"),
                     "Zero-shot": curves.method_color("zero_shot")}
    plotting.curve_png(df, "classification", "f1", tmp_path / "c.png", x="trainable_params")
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_loss_overlay_is_readable():
    n = 200
    steps = pd.DataFrame({"run_id": ["a"] * n + ["b"] * n, "step": list(range(1, n + 1)) * 2,
                          "epoch": [i / n * 2 for i in range(1, n + 1)] * 2,
                          "loss": [5 / i ** .5 + (i % 3) * .3 for i in range(1, n + 1)] * 2})
    spec = curves.loss_overlay(steps, {"a": "lora", "b": "prefix"},
                               {"a": "LoRA 8 · a", "b": "Prefix 10 · b"}).to_dict()
    main = spec["layer"][-1]
    assert main["encoding"]["y"]["scale"]["type"] == "log" and "smoothed" in main["encoding"]["y"]["title"]
    assert main["encoding"]["color"]["legend"]["values"] == ["LoRA", "Prefix-Tuning"]  # a legend of methods
    assert main["encoding"]["x"]["field"] == "epoch"
    assert len(spec["layer"]) == 2  # the raw steps, faint, behind the smoothed line
    data = layer_data(spec, main)
    a = data[data["run_id"] == "a"]
    assert a["loss"].diff().abs().max() < a["raw_loss"].diff().abs().max()  # smoothing smooths
    plain = curves.loss_overlay(steps, {"a": "lora"}, smooth=False, log_y=False).to_dict()
    assert len(plain["layer"]) == 1 and plain["layer"][0]["encoding"]["y"]["scale"].get("type") is None


# -- the page on real runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Real tiny runs: zero-shot, LoRA 4 and 8, prompt tuning 10 and IA3 on the SST-2 sample."""
    store = Store(tmp_path_factory.mktemp("curves-home"))
    for kw in [dict(method="zero_shot"), dict(method="lora", capacity=4), dict(method="lora", capacity=8),
               dict(method="prompt", capacity=10), dict(method="ia3")]:
        run_in_process(store, tiny_spec(**kw))
    return store


def curves_page(home, monkeypatch) -> AppTest:
    monkeypatch.setenv("PEFTCOMPARE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/curves.py").run()
    assert not at.exception, at.exception
    return at


def test_curves_page_front_loss_overlay_and_table(trained, monkeypatch):
    at = curves_page(trained.home, monkeypatch)
    table = at.dataframe[-1]
    t = table.value
    # the rule, with zero-shot as a point: flagged exactly when nothing has <= parameters and >= score
    for i, row in t.iterrows():
        others = t.drop(index=i)
        beaten = ((others["trainable_params"] <= row["trainable_params"]) & (others["mean"] >= row["mean"])
                  & ((others["trainable_params"] < row["trainable_params"]) | (others["mean"] > row["mean"])))
        assert bool(row["pareto"]) == (not beaten.any()), row.to_dict()
    zs = t[t["method"] == "Zero-shot"].iloc[0]
    assert zs["pareto"] and zs["trainable_params"] == 0
    assert not t.loc[t["mean"] <= zs["mean"]].drop(index=zs.name)["pareto"].any()
    if not t.loc[t["method"] != "Zero-shot", "pareto"].any():
        assert any("No adapter is on the Pareto front yet" in i.value for i in at.info)
    # labels and dashes, not raw column names and "None"
    assert table.proto.placeholder == "—"
    cfg = json.loads(table.proto.columns)
    assert cfg["trainable_params"]["label"] == "Trainable params" and cfg["pareto"]["label"] == "Pareto front"
    # the loss overlay: every completed trained run by default, coloured by method
    runs = trained.list_runs()
    assert sorted(at.multiselect(key="cv_loss_runs").value) == sorted(r["run_id"] for r in runs
                                                                      if r["method"] != "zero_shot")
    chart = json.loads(at.get("vega_lite_chart")[1].proto.spec)
    enc = chart["layer"][-1]["encoding"]
    assert enc["color"]["field"] == "method_title" and colour_map(enc) == TITLE_COLOURS
    assert enc["y"]["scale"]["type"] == "log"
    eff = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert colour_map(eff["layer"][0]["encoding"]) == TITLE_COLOURS
    # a zero-shot run is there: no offer to add one
    assert not [b for b in at.button if b.key == "cv_add_zero_shot"]


def test_curves_settings_survive_leaving_the_page(trained, monkeypatch):
    at = curves_page(trained.home, monkeypatch)
    at.selectbox(key="cv_x").set_value("capacity").run()
    at.toggle(key="cv_loss_smooth").set_value(False).run()
    lora4 = [r["run_id"] for r in trained.list_runs() if r["method"] == "lora" and r["capacity"] == 4]
    at.multiselect(key="cv_loss_runs").set_value(lora4).run()
    at.switch_page("pages/adapters.py").run()
    at.switch_page("pages/curves.py").run()
    assert not at.exception
    assert at.selectbox(key="cv_x").value == "capacity" and at.toggle(key="cv_loss_smooth").value is False
    assert at.multiselect(key="cv_loss_runs").value == lora4  # a narrowed choice stays narrowed


def test_add_the_zero_shot_baseline_in_one_click(app_home):
    store = Store(app_home)
    run_in_process(store, tiny_spec(method="lora", capacity=4, eval_samples=12))
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/curves.py").run()
    assert not at.exception
    assert any("No zero-shot baseline for these runs" in m.value for m in at.markdown)
    at.button(key="cv_add_zero_shot").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Zero-shot baseline queued" in s.value for s in at.success)
    (zs,) = [r for r in store.list_runs() if r["method"] == "zero_shot"]
    (lora,) = [r for r in store.list_runs() if r["method"] == "lora"]
    assert curves.eval_key(zs["spec"]) == curves.eval_key(lora["spec"])  # same model, data, 12 eval examples
    assert zs["spec"].eval_samples == 12 and zs["owner"] == at.session_state["visitor_id"]
    assert not [b for b in at.button if b.key == "cv_add_zero_shot"]  # queued: not offered twice
    done = wait_for(lambda: (r := store.get(zs["run_id"]))["status"] not in ("queued", "running") and r,
                    timeout=180, what="the worker to run the zero-shot baseline")
    assert done["status"] == "completed", done.get("error")
    at.run()
    assert any(c.value.startswith("Zero-shot: ") for c in at.caption)
    assert "Zero-shot" in set(at.dataframe[-1].value["method"])
