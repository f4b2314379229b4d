"""One row per (task, method, capacity): the selected learning rate, the mean over seeds with a 95 % CI.

The selection rule, stated once: runs are grouped by everything their specs ask except the seed and the
learning rate (task, model, data, method, capacity, budget, selection protocol, ...). Within a group every
learning rate that was tried is scored by the mean over its seeds of the *selection* score (the dev-split
score of the chosen epoch for selection=dev runs; the validation metric itself for selection=validation runs,
the original protocol, optimistic: such rows say `selected_on: validation`), and the best rate's runs are
the group's row: over seeds, never per seed. Ties go to the smaller rate. The reported number is always the
validation metric of those runs, averaged over seeds, with a two-sided 95 % Student t-interval (n - 1
degrees of freedom); a rerun of a seed counts once (its latest run).
"""
from __future__ import annotations

from collections import defaultdict

from peftcompare.core import methods, tasks
from peftcompare.core.labels import method_label
from peftcompare.service.analysis import selected_on
from peftcompare.service.stats import mean_ci

COLUMNS = ["task", "model_name", "dataset", "method", "capacity", "label", "metric", "n_seeds", "mean",
           "ci_low", "ci_high", "learning_rate", "learning_rates_tried", "selected_on", "budget",
           "trainable_params", "train_runtime", "train_flops", "run_ids", "warning"]
MIN_SEEDS = 3  # fewer seeds than this: the row carries a warning


def selection_score(run: dict, metric: str) -> float | None:
    """The number a run's hyper-parameters are chosen on: the dev score of its chosen state (selection=dev),
    else its validation metric (the original protocol, or a method that trains nothing)."""
    chosen = run.get("selection") or {}
    if chosen.get("on") == "dev":
        return chosen.get("score")
    return (run.get("metrics") or {}).get(metric)


def condition(spec) -> str:
    """What a group of runs shares: the spec with its seed and learning rate left out."""
    neutral = spec.replace(seed=0, learning_rate=1.0) if methods.trains(spec.method) else spec.replace(seed=0)
    return neutral.spec_hash()


def budget_text(spec) -> str:
    if not methods.trains(spec.method):
        return "none"
    if spec.budget == "epochs":
        return f"{spec.num_train_epochs} epoch{'s' * (spec.num_train_epochs != 1)}"
    return f"{spec.budget_value:g} {spec.budget}"


def _eligible(runs: list[dict], task: str | None) -> list[dict]:
    out = []
    for r in runs:
        spec = r.get("spec")
        if r.get("status") != "completed" or spec is None or (task and spec.task != task):
            continue
        if spec.method not in methods.METHODS or tasks.get_task(spec.task).metric not in (r.get("metrics") or {}):
            continue
        out.append(r)
    return out


def _groups(runs: list[dict]) -> dict[tuple, dict[float, list[dict]]]:
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        s = r["spec"]
        groups[(s.task, s.model_name, s.dataset, s.method, s.capacity, condition(s))][s.learning_rate].append(r)
    return groups


def _latest_per_seed(runs: list[dict]) -> list[dict]:
    by_seed: dict[int, dict] = {}
    for r in sorted(runs, key=lambda r: r.get("created_at") or 0):
        by_seed[r["spec"].seed] = r
    return [by_seed[s] for s in sorted(by_seed)]


def choose(by_lr: dict[float, list[dict]], metric: str) -> float:
    """The learning rate with the best mean selection score over its seeds (ties: the smallest rate)."""
    def score(lr):
        vals = [v for r in _latest_per_seed(by_lr[lr]) if (v := selection_score(r, metric)) is not None]
        return sum(vals) / len(vals) if vals else float("-inf")

    return max(sorted(by_lr), key=score)


def selected_runs(runs: list[dict], task: str | None = None) -> list[dict]:
    """The runs the curves and tables show: per group, the selected learning rate's runs (one per seed)."""
    out = []
    for key, by_lr in _groups(_eligible(runs, task)).items():
        out += _latest_per_seed(by_lr[choose(by_lr, tasks.get_task(key[0]).metric)])
    return out


def summarize(runs: list[dict], task: str | None = None) -> list[dict]:
    """Rows (dicts with COLUMNS) for the completed runs, optionally of one task, in a stable order."""
    rows = [_row(key, by_lr) for key, by_lr in _groups(_eligible(runs, task)).items()]
    return sorted(rows, key=lambda row: (row["task"], row["model_name"], row["dataset"], row["method"],
                                         row["capacity"], row["budget"]))


def _mean(values) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _row(key: tuple, by_lr: dict[float, list[dict]]) -> dict:
    task_name, model, dataset, method, capacity, _ = key
    metric = tasks.get_task(task_name).metric
    lr = choose(by_lr, metric)
    chosen = _latest_per_seed(by_lr[lr])
    ci = mean_ci([r["metrics"][metric] for r in chosen])
    on = sorted({selected_on(r) or "?" for r in chosen})
    n = len(chosen)
    # zero-shot does not depend on a seed: one evaluation is its whole story
    warning = "" if n >= MIN_SEEDS or not methods.trains(method) else (
        f"only {n} seed{'s' if n != 1 else ''}: " + ("no interval" if n < 2 else "a wide interval"))
    return {"task": task_name, "model_name": model, "dataset": dataset, "method": method, "capacity": capacity,
            "label": method_label(method, capacity), "metric": metric, "n_seeds": n, "mean": ci.mean,
            "ci_low": ci.low, "ci_high": ci.high, "learning_rate": lr if methods.trains(method) else None,
            "learning_rates_tried": sorted(by_lr) if methods.trains(method) else [],
            "selected_on": "+".join(on), "budget": budget_text(chosen[0]["spec"]),
            "trainable_params": chosen[0].get("trainable_params"),
            "train_runtime": _mean(r.get("train_runtime") for r in chosen),
            "train_flops": _mean(r.get("train_flops") for r in chosen),
            "run_ids": [r["run_id"] for r in chosen], "warning": warning}


def to_frame(rows: list[dict]):
    """The rows as a DataFrame with COLUMNS (lists joined, for CSV and tables)."""
    import pandas as pd

    flat = [{**r, "learning_rates_tried": " ".join(f"{x:g}" for x in r["learning_rates_tried"]),
             "run_ids": " ".join(r["run_ids"])} for r in rows]
    return pd.DataFrame(flat, columns=COLUMNS)
