"""The app's pure helpers: Altair chart specs, ETA from throughput, sweep grids, uploads."""
from __future__ import annotations

import pandas as pd
import pytest

from peftcompare.service import analysis, curves
from peftcompare.core import methods, tasks
from peftcompare.webui import ui
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store


def agg_frame() -> pd.DataFrame:
    rows = [("zero_shot", 0, 0, [0.50]), ("lora", 4, 6144, [0.60, 0.64]), ("lora", 8, 12288, [0.70, 0.72]),
            ("prompt", 10, 640, [0.55, 0.57]), ("ia3", 0, 900, [0.66])]
    runs = []
    for method, cap, params, scores in rows:
        for seed, s in enumerate(scores):
            runs.append({"run_id": f"{method}-{cap}-{seed}", "task": "classification", "model_name": "m",
                         "dataset": "sst2", "method": method, "capacity": cap, "seed": seed, "status": "completed",
                         "trainable_params": params, "f1": s})
    return analysis.aggregate(pd.DataFrame(runs), "f1")


def layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def test_efficiency_chart_log_axis_references_and_pareto():
    agg = agg_frame()
    curve, refs = curves.split_references(agg)
    assert list(refs["method"]) == ["zero_shot"] and "zero_shot" not in set(curve["method"])
    pareto = analysis.pareto_front(curve)
    chart = curves.efficiency_chart(agg, "f1", "trainable_params", "std", pareto)
    spec = layers(chart)
    assert spec[0]["encoding"]["x"]["scale"]["type"] == "log"
    front = [l for l in spec if l["mark"].get("shape") == "circle" if isinstance(l["mark"], dict)]
    assert front, "no Pareto layer"
    rules = [l for l in spec if isinstance(l["mark"], dict) and l["mark"].get("strokeDash") == [6, 4]]
    assert len(rules) == 1
    pts = curves.curve_points(curve, "trainable_params", "std", pareto)
    # prompt 640 (0.56), ia3 900 (0.66), lora 12288 (0.71) are the front; lora 4 (0.62) is beaten by ia3
    assert set(pts.loc[pts["pareto"], "run_ids"]) == {"prompt-10-0, prompt-10-1", "ia3-0-0", "lora-8-0, lora-8-1"}
    lora8 = pts[pts["capacity"] == 8].iloc[0]
    assert lora8["lo"] == pytest.approx(0.71 - lora8["std"]) and lora8["hi"] == pytest.approx(0.71 + lora8["std"])
    # a capacity axis has no place for methods without a knob (log scale, capacity 0)
    assert "ia3" not in set(curves.curve_points(curve, "capacity")["method"])
    mm = curves.curve_points(curve, "trainable_params", "minmax")
    assert mm.loc[mm["capacity"] == 4, "lo"].iloc[0] == 0.60


def test_chart_files_render():
    chart = curves.efficiency_chart(agg_frame(), "f1")
    png = curves.to_png(chart, scale=1)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert curves.to_svg(chart).lstrip().startswith("<svg")
    steps = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "step": [1, 2, 3] * 2, "epoch": [0.3] * 6,
                          "loss": [3, 2, 1, 4, 3, 2.5]})
    spec = curves.loss_chart(steps, {"a": "LoRA 8"}).to_dict()
    assert spec["mark"]["type"] == "line" and spec["encoding"]["color"]["field"] == "run"
    # height is the plot's own: Streamlit's default autosize "fit" would make it the whole chart (legend and
    # axes included), which left the Train page's 180 px loss chart a flat line without a y axis
    assert spec["autosize"] == {"type": "fit-x", "contains": "padding"} and spec["height"] == 260
    assert spec["encoding"]["color"]["legend"] is not None  # two runs: a legend
    one = curves.loss_chart(steps[steps["run_id"] == "a"], height=180).to_dict()
    assert one["encoding"]["color"]["legend"] is None and one["height"] == 180  # one run: its card names it
    assert curves.to_png(curves.loss_chart(steps, height=180), scale=1)[:4] == b"\x89PNG"


def test_eta_uses_measured_parts_and_sample_sizes():
    spec = RunSpec(model_name="builtin:tiny-t5", train_samples=2000, num_train_epochs=2, eval_samples=50)
    rows = sum(1 for line in (tasks.SAMPLES_DIR / "sst2_train.jsonl").read_text().splitlines() if line.strip())
    assert ui.train_size(spec, online=False) == rows  # all of the bundled sst2 sample
    assert ui.train_size(spec, online=True) == 2000
    assert ui.train_size(spec.replace(train_samples=0), online=True) == 67349  # SST-2's train split
    assert ui.eval_size(spec.replace(eval_samples=0), online=True) == 872
    assert ui.train_size(spec.replace(train_samples=0, train_file="/x.csv"), online=True) is None
    guess = ui.estimate([spec], [], online=False)
    g = ui.FALLBACK_TIMINGS[("builtin:tiny-t5", "classification")]
    assert not guess.measured and "rough guess" in guess.basis
    # the 600 rows hold no dev split beside 2000 training examples: 200 (10 %) are carved out of them, scored
    # after each epoch, and the 50 validation examples once at the end
    n_train, n_dev = rows - 200, 200
    assert guess.seconds == pytest.approx(g.startup_s + g.train_s_per_example * n_train * 2
                                          + g.eval_s_per_example * (n_dev * 2 + 50))
    # one finished run: 10 s start to end, 6 s training at 90 examples/s, 2 evaluation passes of 40 examples in 2 s
    past = [{"status": "completed", "model_name": "builtin:tiny-t5", "task": "classification",
             "train_samples_per_second": 90.0, "started_at": 100.0, "finished_at": 110.0, "train_runtime": 6.0,
             "eval_runtime": 2.0, "epochs": [{"epoch": 1, "eval_seconds": 1.0, "eval_samples": 40},
                                              {"epoch": 2, "eval_seconds": 1.0, "eval_samples": 40}]}]
    t = ui.measured_timing(past, "builtin:tiny-t5", "classification")
    assert (t.startup_s, t.train_s_per_example, t.eval_s_per_example, t.runs) == (2.0, 1 / 90, 1 / 40, 1)
    est = ui.estimate([spec, spec.replace(method="zero_shot")], past, online=False)
    assert est.measured and "Measured" in est.basis
    assert est.seconds == pytest.approx((2 + n_train * 2 / 90 + (n_dev * 2 + 50) / 40) + (2 + 50 / 40))
    legacy = ui.estimate([spec.replace(selection="validation")], past, online=False)  # the original protocol
    assert legacy.seconds == pytest.approx(2 + rows * 2 / 90 + (50 * 2 + 50) / 40)  # + its generate-and-parse pass
    assert ui.estimate_seconds([spec.replace(train_samples=0, train_file="/x.csv")], past, online=True) == (None, True)
    # nothing measured for summarization: the guess for that task, not classification's times
    summ = ui.estimate([spec.replace(task="summarization")], past, online=False)
    assert not summ.measured and "builtin:tiny-t5 on summarization" in summ.basis


def test_grid_specs_and_int_lists():
    base = RunSpec(model_name="builtin:tiny-t5")
    grid = ui.grid_specs(base, ["lora", "bitfit"], [4, 8], [1, 2], zero_shot=True)
    assert len(grid) == 1 + 2 * 2 + 2
    assert {(s.method, s.capacity) for s in grid if s.method == "lora"} == {("lora", 4), ("lora", 8)}
    # capacities per method: LoRA 4, 8 and prompt tuning 10 in one grid
    grid = ui.grid_specs(base, ["lora", "prompt"], {"lora": [4, 8], "prompt": [10]}, [1], zero_shot=False)
    assert sorted((s.method, s.capacity) for s in grid) == [("lora", 4), ("lora", 8), ("prompt", 10)]
    with pytest.raises(ValueError, match="capacities for Prompt-Tuning: give at least one virtual tokens"):
        ui.grid_specs(base, ["lora", "prompt"], {"lora": [4]}, [1], zero_shot=False)
    with pytest.raises(ValueError, match="capacities for LoRA: rank r must be at least 1, got 0"):
        ui.grid_specs(base, ["lora"], {"lora": [0, 4]}, [1], zero_shot=False)
    assert ui.default_capacities("lora", online=True) == methods.METHODS["lora"].capacities
    assert ui.default_capacities("ia3", online=False) == ()
    assert ui.parse_int_list(" 4, 8;16 8", "capacities") == [4, 8, 16]
    with pytest.raises(ValueError, match="capacities: expected whole numbers"):
        ui.parse_int_list("4, eight", "capacities")
    with pytest.raises(ValueError, match="capacities for LoRA: rank r must be at most 1024"):
        ui.grid_specs(base, ["lora"], [4096], [1], zero_shot=False)
    with pytest.raises(ValueError, match="seeds"):
        ui.grid_specs(base, ["lora"], [4], [], zero_shot=False)


def test_save_upload_generates_names(tmp_path):
    store = Store(tmp_path)
    p = ui.save_upload(store, "../../x/My Data.JSONL", b'{"a": 1}\n')
    assert p.parent == store.home / "results" / "uploads" and p.suffix == ".jsonl" and "My" not in p.name
    with pytest.raises(ValueError, match="not JSONL, CSV or parquet"):
        ui.save_upload(store, "evil.sh", b"rm -rf /")
