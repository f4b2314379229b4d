"""Paired tests between runs or groups of runs, from the per-example answers the store keeps (no model runs).

A side is a run id, or a group written `method` or `method:capacity`: all seeds of it in one task (the
selected learning rate's runs where several were tried, service/summary.py's rule). Both sides are paired on
the evaluation examples they share (by content key) and compared with a paired bootstrap over those
examples (service/stats.py): the difference of the metric, its 95 % interval and a two-sided p-value.
"""
from __future__ import annotations

from dataclasses import dataclass

from peftcompare.core import methods, tasks
from peftcompare.core.labels import method_label, run_label
from peftcompare.service import stats, summary
from peftcompare.service.store import Store

RESAMPLES = 2000
# the metrics a paired test can recompute from stored answers: (per-example field it reads, how it is scored)
TESTABLE = {"accuracy": ("correct", "mean"), "f1": ("prediction", "f1"), "accuracy_generate":
            ("correct_generate", "mean"), "f1_generate": ("prediction_generate", "f1"),
            "rouge1": ("rouge1", "mean"), "rouge2": ("rouge2", "mean"), "rougeL": ("rougeL", "mean"),
            "rougeLsum": ("rougeLsum", "mean")}


@dataclass
class Side:
    label: str
    runs: list[dict]


def resolve(store: Store, ref: str, task: str | None = None, runs: list[dict] | None = None) -> Side:
    """A run id, or `method` / `method:capacity` (all its seeds in the task, the selected learning rate's)."""
    ref = str(ref).strip()
    run = store.get(ref) if ref and "/" not in ref else None
    if run is not None:
        if run["status"] != "completed":
            raise ValueError(f"run {ref} is {run['status']}, not completed")
        if task and run["spec"].task != task:
            raise ValueError(f"run {ref} is a {run['spec'].task} run, not {task}")
        return Side(run_label(run["spec"], ref), [run])
    name, _, cap = ref.partition(":")
    if name not in methods.METHODS:
        raise ValueError(f"{ref!r} is neither a run id nor a method (write method or method:capacity, e.g. lora:8)")
    try:
        capacity = int(cap) if cap else None
    except ValueError:
        raise ValueError(f"{ref!r}: the capacity after ':' must be a whole number") from None
    pool = runs if runs is not None else store.list_runs(status=("completed",), task=task)
    chosen = [r for r in summary.selected_runs(pool, task) if r["spec"].method == name
              and (capacity is None or r["spec"].capacity == capacity)]
    if not chosen:
        where = f" in {task}" if task else ""
        raise ValueError(f"no completed {method_label(name, capacity)} runs{where}")
    groups = {(r["spec"].task, r["spec"].model_name, r["spec"].dataset, r["spec"].capacity,
               summary.condition(r["spec"])) for r in chosen}
    if len(groups) > 1:
        tasks_seen = sorted({g[0] for g in groups})
        hint = ("give --task" if len(tasks_seen) > 1 and not task else
                "write method:capacity" if capacity is None else "give run ids")
        raise ValueError(f"{ref!r} matches {len(groups)} different experiments (task, model, data, capacity or "
                         f"settings differ): {hint}")
    # the learning rate is named: where a search tried several, the side is the one chosen on the selection split
    rate = f"lr {chosen[0]['spec'].learning_rate:g}, " if methods.get_method(name).trains else ""
    return Side(method_label(name, chosen[0]["spec"].capacity)
                + f" ({rate}{len(chosen)} seed{'s' * (len(chosen) != 1)})", chosen)


def _arrays(per: dict, field: str, kind: str, keys: list[str], label_words: list[str]):
    import numpy as np

    index = {k: i for i, k in enumerate(per["key"])}
    rows = [index[k] for k in keys]
    values = per.get(field)
    if values is None:
        raise KeyError(field)
    if kind == "mean":
        return np.array([[float(values[i])] for i in rows])
    refs = per["reference"]
    classes = [tasks.positive_label(label_words)] if len(label_words) <= 2 else list(label_words)
    out = []
    for i in rows:
        p, r = values[i], refs[i]
        out.append([x for c in classes for x in ((p == c and r == c), (p == c and r != c), (p != c and r == c))])
    return np.array(out, dtype=float)


def test(store: Store, a: str, b: str, task: str | None = None, metric: str | None = None,
         resamples: int = RESAMPLES, seed: int = 0, runs: list[dict] | None = None) -> dict:
    """The paired test of A against B: difference (A - B), its 95 % interval, p-value, examples, seeds."""
    side_a, side_b = resolve(store, a, task, runs), resolve(store, b, task, runs)
    return test_sides(store, side_a, side_b, metric, resamples, seed)


def test_sides(store: Store, side_a: Side, side_b: Side, metric: str | None = None, resamples: int = RESAMPLES,
               seed: int = 0) -> dict:
    task_names = {r["spec"].task for r in side_a.runs + side_b.runs}
    if len(task_names) > 1:
        raise ValueError(f"A and B are runs of different tasks ({', '.join(sorted(task_names))})")
    t = tasks.get_task(task_names.pop())
    metric = metric or t.metric
    allowed = [m for m in TESTABLE if m in t.metrics or (t.scores_labels and m.endswith("_generate"))]
    if metric not in allowed:
        raise ValueError(f"metric: {metric} cannot be tested for {t.name} (choose from {', '.join(allowed)})")
    field, kind = TESTABLE[metric]
    pers = {}
    for r in side_a.runs + side_b.runs:
        per = store.examples(r["run_id"])
        if per is None:
            raise ValueError(f"run {r['run_id']} has no stored per-example answers (a run from before they were "
                             "kept, or imported): retrain it to test it")
        pers[r["run_id"]] = per
    first = pers[side_a.runs[0]["run_id"]]
    shared = set(first["key"])
    for per in pers.values():
        shared &= set(per["key"])
    keys = [k for k in first["key"] if k in shared]
    if not keys:
        raise ValueError("A and B were evaluated on different examples: nothing to pair")
    words = first.get("label_words") or []
    try:
        arr = {rid: _arrays(per, field, kind, keys, words) for rid, per in pers.items()}
    except KeyError:
        raise ValueError(f"metric: {metric} is not stored for every run (the generate-and-parse protocol needs "
                         "a model that generates)") from None
    score = stats.mean_score if kind == "mean" else stats.f1_score
    result = stats.paired_bootstrap_seeds([arr[r["run_id"]] for r in side_a.runs],
                                          [arr[r["run_id"]] for r in side_b.runs], score, resamples, seed)
    n_union = len(set().union(*(set(p["key"]) for p in pers.values())))
    return {"a": side_a.label, "b": side_b.label, "task": t.name, "metric": metric, "difference": result.difference,
            "ci_low": result.low, "ci_high": result.high, "p_value": result.p_value,
            "significant": result.significant, "n_examples": result.n_examples,
            "n_examples_unpaired": n_union - len(keys), "n_seeds_a": len(side_a.runs),
            "n_seeds_b": len(side_b.runs), "resamples": resamples, "test": "paired bootstrap over examples",
            "runs_a": [r["run_id"] for r in side_a.runs], "runs_b": [r["run_id"] for r in side_b.runs]}


def describe(result: dict) -> str:
    """The test in one paragraph (the CLI's output)."""
    verdict = "significant" if result["significant"] else "not significant"
    extra = (f"; {result['n_examples_unpaired']} examples not shared by every run were left out"
             if result["n_examples_unpaired"] else "")
    return (f"{result['a']} - {result['b']}: {tasks.metric_title(result['metric'])} difference "
            f"{result['difference']:+.4f}, 95 % CI [{result['ci_low']:+.4f}, {result['ci_high']:+.4f}], "
            f"p = {result['p_value']:.4f} ({verdict} at 0.05)\n"
            f"{result['test']}, {result['resamples']} resamples of {result['n_examples']} shared validation "
            f"examples; seeds averaged per side ({result['n_seeds_a']} vs {result['n_seeds_b']}){extra}")


def adjacent(store: Store, rows: list[dict], runs: list[dict] | None = None,
             resamples: int = RESAMPLES) -> dict[tuple, dict | None]:
    """Summary rows (service/summary.py) ranked by mean within each (task, model, dataset): each row tested
    against the next one down; {(method, capacity, budget): test or None where answers are not stored}."""
    out: dict[tuple, dict | None] = {}
    by_runs = {r["run_id"]: r for r in runs or []}
    blocks: dict[tuple, list[dict]] = {}
    for row in rows:
        blocks.setdefault((row["task"], row["model_name"], row["dataset"]), []).append(row)
    for block in blocks.values():
        ranked = sorted(block, key=lambda r: -r["mean"])
        for upper, lower in zip(ranked, ranked[1:]):
            sides = []
            for row in (upper, lower):
                rs = [by_runs.get(i) or store.get(i) for i in row["run_ids"]]
                sides.append(Side(row["label"], [r for r in rs if r is not None]))
            try:
                out[_row_key(upper)] = test_sides(store, *sides, resamples=resamples)
            except ValueError:
                out[_row_key(upper)] = None
    return out


def _row_key(row: dict) -> tuple:
    return (row["method"], row["capacity"], row.get("budget"))
