"""Results in PEFT method_comparison's layout: real runs through the CLI, written, read back the way PEFT's
analysis reads them (the fields of its `processing.preprocess`, cast to the dtypes of its `load_df`)."""
from __future__ import annotations

import json

import pandas as pd

from peftcompare.service import peft_mc
from peftcompare.service.store import Store
from pipeline_helpers import cli

TINY = ["--model_name", "builtin:tiny-t5", "--train_samples", "16", "--eval_samples", "8",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8"]
# the fields PEFT's method_comparison analysis reads from each result file, with the dtype it casts them to
READ = {("run_info", "experiment_name"): "string", ("run_info", "total_time"): float,
        ("run_info", "created_at"): "string", ("run_info", "train_config", "model_id"): "string",
        ("train_info", "accelerator_memory_reserved_avg"): int, ("train_info", "accelerator_memory_max"): int,
        ("train_info", "accelerator_memory_reserved_99th"): int, ("train_info", "train_time"): float,
        ("train_info", "file_size"): int, ("train_info", "status"): "string",
        ("meta_info", "package_info", "peft-version"): "string",
        ("meta_info", "package_info", "torch-version"): "string"}
LAST = {"test accuracy": float, "train loss": float, "train samples": int, "train total tokens": int}


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def test_written_results_read_like_peft_method_comparison(tmp_path):
    home = tmp_path / "home"
    cli("train", "--method", "lora", "--capacity", "4", *TINY, home=home, check=True)
    cli("zero-shot", "--model_name", "builtin:tiny-t5", "--eval_samples", "8", home=home, check=True)
    runs = Store(home).list_runs()
    written = peft_mc.write(runs, tmp_path / "mc")
    assert len(written) == 2
    rows = []
    for path in written:
        rec = json.loads(path.read_text())
        assert rec["train_info"]["status"] == "success"
        row = {"/".join(k): _get(rec, k) for k in READ}
        last = rec["train_info"]["metrics"][-1]
        row.update({k: last[k] for k in LAST})
        row["peft_type"] = (rec["run_info"]["peft_config"] or {}).get("peft_type", "full-finetuning")
        rows.append(row)
    df = pd.DataFrame(rows).astype({**{"/".join(k): v for k, v in READ.items()}, **LAST})
    by_type = df.set_index("peft_type")
    lora_run = next(r for r in runs if r["spec"].method == "lora")
    lora = by_type.loc["LORA"]
    # the numbers are the run's own: its accuracy (the selected epoch's), parameters, adapter size
    assert lora["test accuracy"] == lora_run["metrics"]["accuracy"]
    assert lora["train_info/file_size"] == lora_run["adapter_bytes"] > 0
    assert lora["train samples"] in (16, 32)  # the selected epoch (1 or 2) times 16 examples
    rec = json.loads(next(p for p in written if "lora" in p.name).read_text())
    assert rec["train_info"]["num_trainable_params"] == lora_run["trainable_params"]
    assert rec["run_info"]["peft_config"]["r"] == 4
    assert rec["run_info"]["train_config"]["learning_rate"] == lora_run["spec"].learning_rate
    assert [m["epoch"] for m in rec["train_info"]["metrics"][:-1]] == [1, 2]
    assert rec["train_info"]["metrics"][-1]["selected"] is True
    assert rec["meta_info"]["dataset_info"]["train"]["sha"] == lora_run["data_fingerprint"]
    assert rec["run_info"]["experiment_name"].startswith("lora/classification-tiny-t5-r4-s")
    zs = by_type.loc["full-finetuning"]  # PEFT files a config-less run under this name; it is zero-shot here
    assert zs["train_info/file_size"] == 0 and zs["train_info/train_time"] == 0.0


def test_results_format_peft_mc_through_the_cli(tmp_path):
    """`results --format peft-mc --out DIR`: one file per run, with the protocol a reader needs (selection split
    and its size, budget spent, model and data fingerprints) and the one-line refusals."""
    home = tmp_path / "home"
    cli("train", "--method", "lora", "--capacity", "4", *TINY, "--dev_samples", "16", home=home, check=True)
    out = tmp_path / "mc"
    proc = cli("results", "--format", "peft-mc", "--out", str(out), home=home, check=True)
    assert proc.stdout.strip() == f"wrote 1 result files in PEFT method_comparison's layout to {out}"
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    (run,) = Store(home).list_runs()
    assert set(rec) == {"run_info", "train_info", "meta_info"}
    for key in ("created_at", "total_time", "experiment_name", "peft_config", "train_config", "error_msg"):
        assert key in rec["run_info"], key
    for key in ("train_time", "file_size", "num_trainable_params", "num_total_params", "status", "metrics",
                "accelerator_memory_max"):
        assert key in rec["train_info"], key
    cfg = rec["run_info"]["train_config"]
    assert cfg["selection"] == "dev" and cfg["selected"] == {**run["selection"]} and cfg["selected"]["examples"] == 16
    assert cfg["budget_spent"]["steps"] == run["total_steps"] and cfg["budget_spent"]["flop_model"]["formula"]
    meta = rec["meta_info"]
    assert meta["model_info"]["sha"] == run["model_fingerprint"] and len(run["model_fingerprint"]) == 16
    assert meta["dataset_info"]["sha"] == run["data_fingerprint"]
    assert meta["package_info"]["peft-version"] == run["versions"]["peft"]
    last = rec["train_info"]["metrics"][-1]
    assert last["selected on"] == "dev" and last["test accuracy"] == run["metrics"]["accuracy"]
    assert last["train total tokens"] == run["budget"]["tokens"] > 0
    # per-epoch entries carry the dev score as PEFT's validation accuracy, never as a test score
    first = rec["train_info"]["metrics"][0]
    assert first["valid split"] == "dev" and "test accuracy" not in first
    assert first["valid accuracy"] == run["epochs"][0]["dev_accuracy"]
    for argv, needle in ((["--format", "peft-mc"], "out: --format peft-mc needs --out"),
                         (["--format", "json", "--out", str(out)], "out: only --format peft-mc"),
                         (["--format", "peft-mc", "--summary", "--out", str(out)], "summary:")):
        bad = cli("results", *argv, home=home)
        assert bad.returncode == 2 and bad.stderr.strip().startswith(f"error: {needle}"), bad.stderr
