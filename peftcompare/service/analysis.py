"""Pure analysis of the results store: flat tables, seed aggregates, Pareto fronts, method tables."""
from __future__ import annotations

import pandas as pd

from peftcompare.core import methods
from peftcompare.service.stats import mean_ci
from peftcompare.service.store import Store

# accuracy_generate / f1_generate: classification scored the original experiment's way (generate, parse)
METRIC_COLUMNS = ["accuracy", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum", "accuracy_generate", "f1_generate"]
RESULT_COLUMNS = ["run_id", "task", "dataset", "model_name", "method", "capacity", "seed", "status",
                  "trainable_params", "total_params", "trainable_pct", "num_train_epochs", *METRIC_COLUMNS, "best_epoch",
                  "train_runtime", "train_samples_per_second", "eval_runtime", "peak_memory_mb",
                  "adapter_bytes", "stored_params", "precision", "device", "data_source", "data_fingerprint", "spec_hash",
                  "error", "created_at", "finished_at", "learning_rate", "selected_on", "budget", "train_flops",
                  "model_fingerprint"]


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        metrics = r.get("metrics") or {}
        spec = r.get("spec")
        epochs = r.get("epochs") or []
        best = None
        if metrics and epochs:
            for e in epochs:
                if all(e.get(k) == metrics.get(k) for k in METRIC_COLUMNS if k in metrics):
                    best = e.get("epoch")
                    break
        row = {k: r.get(k) for k in RESULT_COLUMNS if k in r}
        row.update({k: metrics.get(k) for k in METRIC_COLUMNS})
        row["dataset"] = spec.dataset if spec else None
        row["num_train_epochs"] = spec.num_train_epochs if spec else None
        row["best_epoch"] = r.get("best_epoch") or best  # recorded since schema 4; matched by score before
        trains = bool(spec) and spec.method in methods.METHODS and methods.trains(spec.method)
        row["learning_rate"] = spec.learning_rate if trains else None  # zero-shot learns nothing
        row["selected_on"] = selected_on(r)
        row["budget"] = (f"{spec.budget_value:g} {spec.budget}" if spec.budget != "epochs" else
                         f"{spec.num_train_epochs} epochs") if spec else None
        tp, tot = r.get("trainable_params"), r.get("total_params")
        row["trainable_pct"] = 100.0 * tp / tot if tp is not None and tot else None
        rows.append(row)
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return df


def load_df(store: Store, status: tuple[str, ...] | None = None, task: str | None = None) -> pd.DataFrame:
    return runs_frame(store.list_runs(status=status, task=task))


def aggregate(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std, min and max of `metric` over seeds per (task, model, dataset, method, capacity)."""
    keys = ["task", "model_name", "dataset", "method", "capacity"]
    done = df[(df["status"] == "completed") & df[metric].notna()]
    extra = ["ci_low", "ci_high", "learning_rate", "selected_on", "train_runtime", "train_flops", "stored_params"]
    if done.empty:
        return pd.DataFrame(columns=[*keys, "trainable_params", "mean", "std", "min", "max", "n", "run_ids", *extra])
    g = done.groupby(keys, dropna=False)
    out = g.agg(trainable_params=("trainable_params", "median"), mean=(metric, "mean"), std=(metric, "std"),
                min=(metric, "min"), max=(metric, "max"), n=(metric, "size"),
                run_ids=("run_id", lambda s: ", ".join(s))).reset_index()
    out["std"] = out["std"].fillna(0.0)
    # the mean's 95 % Student t-interval over seeds (none from one seed)
    cis = [mean_ci(list(group[metric])) for _, group in g]
    out["ci_low"], out["ci_high"] = [c.low for c in cis], [c.high for c in cis]

    def joined(col, fmt=str):
        if col not in done:
            return [None] * len(out)
        return [", ".join(fmt(v) for v in sorted(set(group[col].dropna()))) or None for _, group in g]

    out["learning_rate"] = joined("learning_rate", lambda v: f"{v:g}")
    out["selected_on"] = joined("selected_on")
    # the x axes of a budget comparison, and what the saved adapter holds (tensor elements)
    for col in ("train_runtime", "train_flops", "stored_params"):
        out[col] = list(g[col].median()) if col in done else None
    return out.sort_values(["task", "method", "capacity"]).reset_index(drop=True)


def selected_on(run: dict) -> str | None:
    """Where a run's reported state was chosen: 'dev', 'validation' (the original protocol), or 'none' for a
    method that trains nothing; from the record, else (a record from before schema 4) its spec."""
    chosen = (run.get("selection") or {}).get("on")
    spec = run.get("spec")
    if chosen:
        return chosen
    if spec is None:
        return None
    return spec.selection if spec.method in methods.METHODS and methods.trains(spec.method) else "none"


def pareto_front(agg: pd.DataFrame, x: str = "trainable_params", y: str = "mean") -> pd.Series:
    """True for points no other point beats: a point is on the front only if no other point has as few
    or fewer parameters and as high or higher a score (and is better in one of them).

    Pass every point, the references included: zero-shot (0 trainable parameters) and full fine-tuning
    are points of the front, so an adapter that zero-shot beats is not on it. A method that trains
    nothing counts 0 parameters even where the record has none; a point without a score or a count is
    neither on the front nor beats anything."""

    if agg.empty:
        return pd.Series(dtype=bool, index=agg.index)
    xs = pd.to_numeric(agg[x], errors="coerce").astype(float)
    if "method" in agg:
        trains = agg["method"].map(methods.trains)
        xs = xs.where(xs.notna() | trains.astype(bool), 0.0)
    ys = pd.to_numeric(agg[y], errors="coerce").astype(float)
    ok = xs.notna() & ys.notna()
    flags = []
    for i in agg.index:
        if not ok[i]:
            flags.append(False)
            continue
        others = ok & (agg.index != i)
        dominated = (others & (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))).any()
        flags.append(not bool(dominated))
    return pd.Series(flags, index=agg.index, dtype=bool)


def method_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method: best metric, change vs zero-shot and full fine-tuning, parameter reduction, time, memory."""
    done = df[(df["status"] == "completed") & df[metric].notna()]
    if done.empty:
        return pd.DataFrame()
    done = done.assign(epoch_seconds=done["train_runtime"] / done["num_train_epochs"])
    g = done.groupby(["method", "capacity"], dropna=False).agg(
        metric=(metric, "mean"), trainable_params=("trainable_params", "median"),
        total_params=("total_params", "median"), train_runtime=("train_runtime", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"), train_seconds_per_epoch=("epoch_seconds", "mean"),
        runs=("run_id", "size")).reset_index()
    zs = g.loc[g["method"].isin(methods.by_role(methods.ROLE_BASELINE)), "metric"]
    full = g.loc[g["method"].isin(methods.by_role(methods.ROLE_FULL))]
    if len(zs):
        g["vs_zero_shot"] = g["metric"] - zs.iloc[0]
        g["vs_zero_shot_pct"] = 100 * g["vs_zero_shot"] / zs.iloc[0] if zs.iloc[0] else None
    if len(full):
        f = full.iloc[0]
        g["vs_full"] = g["metric"] - f["metric"]
        g["vs_full_pct"] = 100 * g["vs_full"] / f["metric"] if f["metric"] else None
        g["param_reduction_x"] = f["trainable_params"] / g["trainable_params"].where(g["trainable_params"] > 0)
    g["metric_name"] = metric
    return g.sort_values("metric", ascending=False).reset_index(drop=True)
