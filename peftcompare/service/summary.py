"""One row per (task, method, capacity): the selected learning rate, the mean over seeds with a 95 % CI.

The selection rule, stated once: for each (task, model, dataset, method, capacity), every learning rate that
was tried is scored by the mean over its seeds of the *selection* score — the dev-split metric of runs trained
with selection=dev, the validation metric itself for selection=validation runs (the original protocol, and
optimistic: such rows say `selected_on: validation`) — and the best rate's runs are reported. The reported
number is always the validation metric of those runs, averaged over seeds, with a Student t-interval.
"""
from __future__ import annotations

from collections import defaultdict

from peftcompare.core import tasks
from peftcompare.core.labels import method_label
from peftcompare.service.stats import mean_ci

COLUMNS = ["task", "model_name", "dataset", "method", "capacity", "label", "metric", "n_seeds", "mean",
           "ci_low", "ci_high", "learning_rate", "learning_rates_tried", "selected_on", "trainable_params",
           "run_ids", "warning"]


def selection_score(run: dict, metric: str) -> float | None:
    """The number a run's hyper-parameters are chosen on: its dev metric, else its validation metric."""
    m = run.get("metrics") or {}
    return m.get(f"dev_{metric}") if run["spec"].selection == "dev" else m.get(metric)


def _group_key(run: dict) -> tuple:
    s = run["spec"]
    return (s.task, s.model_name, s.dataset, s.method, s.capacity)


def summarize(runs: list[dict], task: str | None = None) -> list[dict]:
    """Rows (dicts with COLUMNS) for the completed runs, optionally of one task, in a stable order."""
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        spec = r.get("spec")
        if r.get("status") != "completed" or spec is None or (task and spec.task != task):
            continue
        if tasks.get_task(spec.task).metric not in (r.get("metrics") or {}):
            continue
        groups[_group_key(r)][spec.learning_rate].append(r)
    rows = [_row(key, by_lr) for key, by_lr in groups.items()]
    return sorted(rows, key=lambda row: (row["task"], row["model_name"], row["method"], row["capacity"]))


def _row(key: tuple, by_lr: dict[float, list[dict]]) -> dict:
    task_name, model, dataset, method, capacity = key
    metric = tasks.get_task(task_name).metric

    def score(lr):
        vals = [v for r in by_lr[lr] if (v := selection_score(r, metric)) is not None]
        return sum(vals) / len(vals) if vals else float("-inf")

    lr = max(sorted(by_lr), key=score)  # ties: the smallest rate (sorted first), the cautious choice
    chosen = by_lr[lr]
    ci = mean_ci([r["metrics"][metric] for r in chosen])
    on = sorted({r["spec"].selection for r in chosen})
    seeds = len({r["spec"].seed for r in chosen})
    warning = "" if seeds >= 3 else f"only {seeds} seed{'s' if seeds != 1 else ''}: the interval is wide or missing"
    return {"task": task_name, "model_name": model, "dataset": dataset, "method": method, "capacity": capacity,
            "label": method_label(method, capacity), "metric": metric, "n_seeds": seeds, "mean": ci.mean,
            "ci_low": ci.low, "ci_high": ci.high, "learning_rate": lr,
            "learning_rates_tried": sorted(by_lr), "selected_on": "+".join(on),
            "trainable_params": chosen[0].get("trainable_params"),
            "run_ids": [r["run_id"] for r in chosen], "warning": warning}
