"""Interchange with PEFT's own benchmark: one JSON per run in `method_comparison`'s result layout.

PEFT's `method_comparison/processing.py` (`load_df`) reads `run_info`, `train_info` and `meta_info` with the
fields written below, keeps runs whose `train_info.status` is "success" and takes the last entry of
`train_info.metrics`. Its tools were written for one accuracy on a test set: `test accuracy` carries the
run's accuracy where the task has one and its primary metric otherwise (ROUGE-L for summarization), and
`test metric` says which; peftcompare's own metrics ride along under their own names. Memory is in bytes;
peftcompare measures peak process memory, so the three memory fields carry that one figure (named so in
`memory_note`); counts peftcompare does not record per epoch (tokens seen) are -1, never a made-up number.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from peftcompare.core import methods, tasks

STATUS = {"completed": "success", "failed": "failed", "cancelled": "canceled", "interrupted": "failed"}
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def experiment_name(run: dict) -> str:
    """`<method>/<task>-<model>-<capacity>-s<seed>`: PEFT names experiments `<peft-method>/<name>`."""
    spec = run["spec"]
    m = methods.get_method(spec.method) if spec.method in methods.METHODS else None
    cap = f"-{m.capacity_name.split()[-1]}{spec.capacity}" if m is not None and m.capacity_name else ""
    model = spec.model_name.rsplit("/", 1)[-1].replace("builtin:", "")
    return f"{spec.method}/{_SAFE.sub('_', f'{spec.task}-{model}{cap}-s{spec.seed}')}"


def _iso(ts) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def _peft_config(run: dict) -> dict | None:
    """The adapter's own adapter_config.json (what PEFT would have saved); None for methods without one."""
    path = Path(run["adapter_dir"]) / "adapter_config.json" if run.get("adapter_dir") else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


UNKNOWN = -1  # PEFT's tools read these counts as integers; peftcompare does not record them per epoch


def _entry(run: dict, epoch: int, values: dict) -> dict:
    """One evaluation. Per-epoch entries carry the selection split's score as PEFT's "valid accuracy" (the
    dev split's with selection=dev); a validation score, as PEFT's final entry does, is "test accuracy"."""
    spec = run["spec"]
    primary = tasks.get_task(spec.task).metric
    steps_per_epoch = (run.get("total_steps") or 0) / max(1, spec.num_train_epochs)
    step = values.get("step") if values.get("step") is not None else int(round(epoch * steps_per_epoch))
    on_dev = values.get("eval_split") == "dev"
    prefix = "dev_" if on_dev else ""
    accuracy = values.get(f"{prefix}accuracy", values.get(f"{prefix}{primary}"))
    seen = (run.get("budget") or {}).get("train_examples")  # after the dev split took its share
    entry = {"step": int(step), "epoch": epoch,
             "valid accuracy": accuracy, "valid split": "dev" if on_dev else "validation",
             "test metric": "accuracy" if f"{prefix}accuracy" in values else primary,
             "train loss": values.get("train_loss"),
             "train samples": epoch * (seen or spec.train_samples) if (seen or spec.train_samples) else UNKNOWN,
             "train total tokens": UNKNOWN,
             **{k: v for k, v in values.items() if not k.startswith("_") and k != "epoch"}}
    if not on_dev:
        entry["test accuracy"] = accuracy
    return entry


def _selected_epoch(run: dict, final: dict) -> int:
    """The epoch whose state the record reports: recorded since schema 4, else matched by its score."""
    if run.get("best_epoch") is not None:
        return int(run["best_epoch"])
    primary = tasks.get_task(run["spec"].task).metric
    epochs = run.get("epochs") or []
    hit = [int(e.get("epoch") or 0) for e in epochs if e.get(primary) == final.get(primary)]
    return hit[0] if hit else int(epochs[-1].get("epoch") or 0) if epochs else 0


def _metrics(run: dict) -> list[dict]:
    """One entry per evaluated epoch, then the selected state (the record's metrics) last: PEFT's tools read
    the last entry, and that is the number peftcompare reports."""
    rows = [_entry(run, int(e.get("epoch") or 0), e) for e in run.get("epochs") or []]
    final = {k: v for k, v in (run.get("metrics") or {}).items() if not k.startswith("_")}
    if final:
        best = _selected_epoch(run, final)
        chosen = next((r for r in rows if r["epoch"] == best), {})
        last = _entry(run, best, {**final, "train_loss": chosen.get("train loss"), "step": chosen.get("step")})
        tokens = (run.get("budget") or {}).get("tokens")
        rows.append({**last, "train total tokens": tokens if tokens else UNKNOWN, "selected": True,
                     "selected on": (run.get("selection") or {}).get("on", run["spec"].selection)})
    return rows


def to_peft_mc(run: dict) -> dict:
    """One store run (Store.get / list_runs row) as a method_comparison result record."""
    spec = run["spec"]
    versions = run.get("versions") or {}
    memory = int((run.get("peak_memory_mb") or 0) * 2**20)
    total = ((run.get("finished_at") or 0) - (run.get("started_at") or run.get("created_at") or 0)) or None
    return {
        "run_info": {
            "created_at": _iso(run.get("started_at") or run.get("created_at")),
            "total_time": total if total is None else round(total, 3),
            "experiment_name": experiment_name(run),
            "peft_branch": "peftcompare",
            # the spec (selection protocol and budget included) and how the reported state was chosen
            "train_config": {"model_id": spec.model_name, **spec.to_dict(), "selection": spec.selection,
                             "selected": run.get("selection") or {"on": spec.selection},
                             "budget_spent": run.get("budget")},
            "peft_config": _peft_config(run),
            "error_msg": run.get("error") or "",
        },
        "train_info": {
            "accelerator_memory_reserved_avg": memory, "accelerator_memory_max": memory,
            "accelerator_memory_reserved_99th": memory,
            "memory_note": "peak resident memory of the training process (bytes); on CUDA the peak allocated",
            "train_time": run.get("train_runtime") or 0.0,  # zero-shot trains nothing
            "file_size": run.get("adapter_bytes") or 0,  # zero-shot stores nothing
            "num_trainable_params": run.get("trainable_params"),
            "num_total_params": run.get("total_params"),
            "status": STATUS.get(run.get("status"), run.get("status")),
            "metrics": _metrics(run),
        },
        "meta_info": {
            # PEFT records the Hub's commit sha; peftcompare a hash of the weights themselves
            "model_info": {"sha": run.get("model_fingerprint"), "created_at": None, "name": spec.model_name,
                           "fingerprint": run.get("model_fingerprint")},
            "dataset_info": {"sha": run.get("data_fingerprint"), "created_at": None, "name": spec.dataset,
                             "source": run.get("data_source"),
                             "train": {"sha": run.get("data_fingerprint"), "created_at": None,
                                       "name": spec.dataset, "source": run.get("data_source")}},
            "package_info": {
                "transformers-version": versions.get("transformers"), "transformers-commit-hash": None,
                "peft-version": versions.get("peft"), "peft-commit-hash": None,
                "datasets-version": versions.get("datasets"), "datasets-commit-hash": None,
                "bitsandbytes-version": None, "bitsandbytes-commit-hash": None,
                "torch-version": versions.get("torch"), "torch-commit-hash": None,
                "peftcompare-version": versions.get("peftcompare"),
                "peftcompare-commit-hash": versions.get("peftcompare_commit"),
            },
            "system_info": {"system": versions.get("platform"), "processor": versions.get("cpu"),
                            "accelerator": versions.get("gpu") or run.get("device")},
            "pytorch_info": f"torch {versions.get('torch')}",
        },
    }


def write(runs: list[dict], out: Path) -> list[Path]:
    """One `<experiment_name with -- for />.json` per run with a record (queued and running runs have none)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        if run.get("status") not in STATUS or run.get("spec") is None:
            continue
        path = out / (experiment_name(run).replace("/", "--") + f"--{run['run_id'][-6:]}.json")
        path.write_text(json.dumps(to_peft_mc(run), indent=2, default=str))
        written.append(path)
    return written
