"""Where zero-shot and the adapters disagree, across the validation set.

find() runs the untouched base model and the chosen adapters over the first N validation examples through
CompareEngine.compare_many (the engine's batched paths, one base model), scores every column with the
metrics evaluation uses (accuracy and F1, or ROUGE), and ranks the examples where the columns disagree
(rank_disagreements, a pure function of the per-example answers).

Results are cached on disk in the store's results/cache/disagreements/, one JSON file per key: a hash of
the columns' run ids and their adapter files (sizes, mtimes, checksums of the small ones), the examples'
fingerprint, N, task, base model, precision and device. A re-imported or retrained adapter, another data
set or another N is a new key; reopening the same comparison reads the file instead of running the model.
Importing this module does not import torch (the Compare page imports it before it needs the model).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from pathlib import Path

from peftcompare.core import tasks
from peftcompare.core.spec import RunSpec

DEFAULT_N = 200
CACHE_VERSION = 1
CACHE_SUBDIR = "disagreements"
MAX_CACHE_FILES = 200  # the oldest files beyond this are removed when a new one is written
HASHED_FILE_BYTES = 16 * 2**20  # adapter files up to this size are hashed; larger ones by size and mtime
BASE_NAME = "zero-shot"  # the zero-shot column's name in CSV headers (adapters: their run id)


# -- the pure part: which examples disagree, and how much --------------------------------------------------
def disagreement(task: str, outputs: list[list[str]], distributions: list[list[list[float]]] | None = None,
                 rouge_l: list[list[float]] | None = None) -> list[dict]:
    """Per example i, {"disagree": bool, "gap": float}, from outputs[c][i] (column c's answer to example i).

    classification: the columns' labels differ; gap = the largest spread, across columns, of one label's
    probability (max over labels of max_c p_c(label) - min_c p_c(label); distributions[c][i] is column c's
    probability of every label). summarization: the summaries differ (whitespace aside); gap = the spread of
    their ROUGE-L against the reference (max - min over columns; rouge_l[c][i])."""
    t = tasks.get_task(task)
    n = len(outputs[0]) if outputs else 0
    if any(len(col) != n for col in outputs):
        raise ValueError("outputs: every column needs one answer per example")
    extra = distributions if t.scores_labels else rouge_l
    if outputs and (extra is None or len(extra) != len(outputs) or any(len(col) != n for col in extra)):
        raise ValueError(f"{task} needs every column's label distributions" if t.scores_labels
                         else f"{task} needs every column's ROUGE-L per example")
    one = _label_disagreement if t.scores_labels else _text_disagreement
    return [one([col[i] for col in outputs], [col[i] for col in extra]) for i in range(n)]


def _label_disagreement(answers: list[str], dists: list[list[float]]) -> dict:
    """The labels differ; gap: the largest spread, across columns, of one label's probability."""
    gap = max((max(d[k] for d in dists) - min(d[k] for d in dists) for k in range(len(dists[0]))), default=0.0)
    return {"disagree": len(set(answers)) > 1, "gap": float(gap)}


def _text_disagreement(answers: list[str], scores: list[float]) -> dict:
    """The texts differ (whitespace aside); gap: the spread of their ROUGE-L against the reference."""
    return {"disagree": len({" ".join(a.split()) for a in answers}) > 1, "gap": float(max(scores) - min(scores))}


def rank_disagreements(task: str, outputs: list[list[str]], distributions=None, rouge_l=None) -> list[int]:
    """Indices of the examples where the columns disagree, largest gap first (ties: lower index first)."""
    flags = disagreement(task, outputs, distributions, rouge_l)
    return sorted((i for i, f in enumerate(flags) if f["disagree"]), key=lambda i: (-flags[i]["gap"], i))


def rouge_l_each(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L of each prediction, scored exactly as evaluate.rouge scores it (their mean is its rougeL)."""
    from rouge_score import rouge_scorer

    from peftcompare.engine import evaluate as eval_mod

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(eval_mod._sentences(r), eval_mod._sentences(p))["rougeL"].fmeasure
            for p, r in zip(predictions, references)]


# -- the examples and the cache key --------------------------------------------------------------------------
def data_spec(spec: RunSpec) -> RunSpec:
    """The spec whose validation split is walked: every example, in the fixed order eval_samples cuts."""
    return spec.replace(eval_samples=0, train_samples=1)


def validation_examples(spec: RunSpec) -> list[tuple[str, str]]:
    """(text, reference) of every validation example of the spec's data (spec need not be resolved)."""
    from peftcompare.engine import data as data_mod

    return [(e.text, e.target) for e in data_mod.load_task_data(data_spec(spec).resolved()).validation]


def fingerprint(examples: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for text, target in examples:
        h.update(text.encode() + b"\x1f" + target.encode() + b"\x1e")
    return h.hexdigest()[:16]


def adapter_stamp(rec: dict) -> list:
    """What identifies an adapter's files: name, size and mtime of each, and a checksum of the small ones."""
    out = []
    for f in sorted(Path(rec["_dir"]).iterdir()):
        if not f.is_file():
            continue
        st = f.stat()
        item = [f.name, st.st_size, st.st_mtime_ns]
        if st.st_size <= HASHED_FILE_BYTES:
            item.append(hashlib.sha256(f.read_bytes()).hexdigest()[:16])
        out.append(item)
    return out


def prepare(engine, run_ids: list[str], n: int = DEFAULT_N, task: str | None = None,
            model_name: str | None = None, examples: list | None = None) -> dict:
    """Columns, the first n examples (n capped by the set's size) and the cache key; runs no model.
    examples: the validation set as (text, reference) pairs or data.Example, when the caller has it."""
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"n: expected a whole number, got {n!r}") from None
    if n < 1:
        raise ValueError("n: choose at least one example")
    plan = engine.plan(run_ids, task, model_name)
    spec = plan["recs"][0]["_spec"] if plan["recs"] else RunSpec(task=plan["task"], model_name=plan["model_name"])
    if examples is None:
        examples = validation_examples(spec)
    examples = [(e.text, e.target) if hasattr(e, "target") else (str(e[0]), str(e[1])) for e in examples]
    if not examples:
        raise ValueError("validation data: no examples")
    chosen = examples[:n]
    payload = {"version": CACHE_VERSION, "task": plan["task"], "model_name": plan["model_name"],
               "precision": engine.precision, "device": engine.device, "n": len(chosen),
               "examples": fingerprint(chosen),
               "columns": [[c["key"], adapter_stamp(c["rec"]) if "rec" in c else None] for c in plan["columns"]]}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    store = getattr(engine, "store", None)
    path = store.cache_dir / CACHE_SUBDIR / f"{key}.json" if store is not None else None
    return {"plan": plan, "examples": chosen, "n_available": len(examples), "key": key, "path": path,
            "dataset": plan["zs_spec"].dataset}


def _read(path: Path | None, key: str) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a torn or foreign file: computed again and rewritten
    if not isinstance(result, dict) or result.get("version") != CACHE_VERSION or result.get("key") != key:
        return None
    result["cached"] = True
    return result


def _write(path: Path | None, result: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result), encoding="utf-8")
        os.replace(tmp, path)
        files = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:-MAX_CACHE_FILES]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # the cache is an optimisation: a read-only or full disk must not fail the comparison


def lookup(engine, run_ids: list[str], n: int = DEFAULT_N, task: str | None = None,
           model_name: str | None = None, examples: list | None = None, prepared: dict | None = None,
           stored: bool = True) -> dict | None:
    """The result from the runs' stored answers (`stored`) or the cache, or None; never runs the model."""
    prep = prepared or prepare(engine, run_ids, n, task, model_name, examples)
    return (from_stored(engine, prep) if stored else None) or _read(prep["path"], prep["key"])


# -- the run -------------------------------------------------------------------------------------------------
def find(engine, run_ids: list[str], n: int = DEFAULT_N, task: str | None = None, model_name: str | None = None,
         examples: list | None = None, progress=None, use_cache: bool = True, prepared: dict | None = None,
         rows_per_batch: int | None = None, stored: bool = True) -> dict:
    """Zero-shot and each adapter over the first n validation examples: per-column scores, per-example
    answers and the ranked disagreements. progress(done, total) counts answers (examples x columns).

    stored: where every column (zero-shot included) stored its evaluation answers for these examples, the
    result is built from them and no model runs; use_cache: else an earlier result of the same comparison."""
    prep = prepared or prepare(engine, run_ids, n, task, model_name, examples)
    hit = from_stored(engine, prep) if stored else None
    if hit is None and use_cache:
        hit = _read(prep["path"], prep["key"])
    if hit is not None:
        if progress is not None:
            progress(1, 1)
        return hit
    plan, chosen = prep["plan"], prep["examples"]
    kwargs = {"rows_per_batch": rows_per_batch} if rows_per_batch else {}
    run = engine.compare_many([t for t, _ in chosen], [c["key"] for c in plan["columns"][1:]], task=plan["task"],
                              model_name=plan["model_name"], progress=progress, **kwargs)
    result = build(run, chosen, prep)
    _write(prep["path"], result)
    return result


# -- the answers the runs stored when they were evaluated -------------------------------------------------------
# the zero-shot column's settings a stored zero-shot run must share (its examples are matched by content)
_ZS_FIELDS = ("dataset", "prompt_template", "answer_cue", "max_source_length", "max_target_length")


def from_stored(engine, prep: dict) -> dict | None:
    """The result built from the per-example answers the runs stored at evaluation, without running a model;
    None unless every column (zero-shot included: a stored zero-shot run of the same model, prompt and
    lengths) has answers for every chosen example."""
    from peftcompare.engine.data import Example, example_key

    store = getattr(engine, "store", None)
    if store is None:
        return None
    plan, chosen = prep["plan"], prep["examples"]
    keys = [example_key(Example(t, r)) for t, r in chosen]
    stored = [_zero_shot_answers(store, plan, keys)]
    for c in plan["columns"][1:]:
        per = store.examples(c["key"])
        stored.append(per if per is not None and set(keys) <= set(per.get("key") or ()) else None)
    if any(per is None for per in stored):
        return None
    labels = tasks.get_task(plan["task"]).scores_labels
    if labels and any(per.get("label_words") != list(plan["label_words"] or []) or "distribution" not in per
                      for per in stored):
        return None  # answers over other label words (or from before distributions were kept) do not pair
    columns = []
    for c, per in zip(plan["columns"], stored):
        index = {k: i for i, k in enumerate(per["key"])}
        rows = [index[k] for k in keys]
        columns.append({"key": c["key"], "label": c["label"], "method": c["method"],
                        "outputs": [per["prediction"][i] for i in rows],
                        "probabilities": [per["probability"][i] for i in rows] if labels else [None] * len(rows),
                        "distributions": [per["distribution"][i] for i in rows] if labels else [None] * len(rows)})
    runs = [store.get(c["key"]) for c in plan["columns"][1:]] + [stored[0].get("_run")]
    precisions = sorted({r.get("precision") or "?" for r in runs if r})
    devices = sorted({r.get("device") or "?" for r in runs if r})
    result = build({"task": plan["task"], "model_name": plan["model_name"], "label_words": plan["label_words"],
                    "columns": columns, "precision": "+".join(precisions), "device": "+".join(devices),
                    "seconds": 0.0}, chosen, prep)
    result["source"] = "stored"  # the runs' own evaluation answers: no model ran
    return result


def _zero_shot_answers(store, plan: dict, keys: list[str]) -> dict | None:
    zs = plan["zs_spec"]
    for run in reversed(store.list_runs(status=("completed",), task=plan["task"])):
        spec = run.get("spec")
        if (spec is None or spec.method != zs.method or spec.model_name != plan["model_name"]
                or any(getattr(spec, f) != getattr(zs, f) for f in _ZS_FIELDS)):
            continue
        per = store.examples(run["run_id"])
        if per is not None and set(keys) <= set(per.get("key") or ()):
            return {**per, "_run": run}
    return None


def build(run: dict, chosen: list[tuple[str, str]], prep: dict) -> dict:
    """The result from compare_many's answers: scores, per-example rows and the ranking."""
    task, refs = run["task"], [r for _, r in chosen]
    labels = tasks.get_task(task).scores_labels
    outputs = [c["outputs"] for c in run["columns"]]
    distributions = [c["distributions"] for c in run["columns"]] if labels else None
    rouge = None if labels else [rouge_l_each(c["outputs"], refs) for c in run["columns"]]
    columns = [{"key": c["key"], "label": c["label"], "method": c["method"],
                "name": BASE_NAME if j == 0 else c["key"], "scores": _scores(run, c, refs)}
               for j, c in enumerate(run["columns"])]
    flags = disagreement(task, outputs, distributions, rouge)
    rows = []
    for i, (text, ref) in enumerate(chosen):
        row = {"index": i, "text": text, "reference": ref, "outputs": [col[i] for col in outputs], **flags[i]}
        if labels:
            row["probabilities"] = [c["probabilities"][i] for c in run["columns"]]
            row["correct"] = [col[i] == ref for col in outputs]
        else:
            row["rougeL"] = [col[i] for col in rouge]
        rows.append(row)
    ranked = sorted((i for i, f in enumerate(flags) if f["disagree"]), key=lambda i: (-flags[i]["gap"], i))
    return {"version": CACHE_VERSION, "key": prep["key"], "task": task, "model_name": run["model_name"],
            "dataset": prep["dataset"], "n": len(chosen), "n_available": prep["n_available"],
            "label_words": run["label_words"], "precision": run["precision"], "device": run["device"],
            "seconds": round(run["seconds"], 3), "created_at": time.time(), "cached": False,
            "columns": columns, "examples": rows, "disagreements": ranked}


def _scores(run: dict, column: dict, refs: list[str]) -> dict:
    """One column's scores over the examples, computed as evaluation computes them."""
    from peftcompare.engine import evaluate as eval_mod

    outputs, n = column["outputs"], len(refs)
    if tasks.get_task(run["task"]).scores_labels:
        scores = eval_mod.classification_metrics(outputs, refs, tasks.positive_label(run["label_words"]))
        scores["mean_probability"] = sum(column["probabilities"]) / n
    else:
        scores = eval_mod.rouge(outputs, refs)
        scores["gen_len"] = sum(len(p.split()) for p in outputs) / n
    return scores


# -- output --------------------------------------------------------------------------------------------------
def csv_header(result: dict) -> list[str]:
    t = tasks.get_task(result["task"])
    return (["index", "text", "reference"]
            + [f"{c['name']} {p}" for c in result["columns"] for p in (t.answer_word, t.score_word)]
            + ["disagree", t.spread_word])


def to_csv(result: dict) -> str:
    """One row per example: text, reference, every column's answer and its probability or ROUGE-L, and
    whether the columns disagree (with the gap the ranking uses)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_header(result))
    second = "probabilities" if tasks.get_task(result["task"]).scores_labels else "rougeL"
    for row in result["examples"]:
        cells = [row["index"], row["text"], row["reference"]]
        for out, value in zip(row["outputs"], row[second]):
            cells += [out, f"{value:.6f}"]
        w.writerow(cells + [row["disagree"], f"{row['gap']:.6f}"])
    return buf.getvalue()


def score_names(task: str) -> list[str]:
    """The scores shown per column: every label metric, or a generating task's primary metric alone (its
    ROUGE siblings say little more in a table this narrow)."""
    t = tasks.get_task(task)
    return list(t.metrics) if t.scores_labels else [t.metric]


def report(result: dict, top: int = 10) -> str:
    """Per-column scores and the top disagreements, as plain text (the CLI's output)."""
    names = score_names(result["task"])
    titles = [c["label"] if c["name"] == BASE_NAME else f"{c['label']} {c['name']}" for c in result["columns"]]
    width = max(len(t) for t in titles) + 2
    lines = [f"{result['n']} validation examples of {result['dataset']} ({result['n_available']} in the set) · "
             f"{result['model_name']} · {result['precision']} on {result['device']} · "
             + ("from the runs' stored evaluation answers" if result.get("source") == "stored" else
                "from the cache" if result.get("cached") else f"{result['seconds']:.1f} s"),
             "column".ljust(width) + "".join(n.rjust(10) for n in names)]
    for title, c in zip(titles, result["columns"]):
        lines.append(title.ljust(width) + "".join(f"{c['scores'][n]:10.4f}" for n in names))
    ranked = result["disagreements"]
    t = tasks.get_task(result["task"])
    gap = t.spread_word
    if len(result["columns"]) < 2:
        lines.append("one column only: give adapter run ids to find where they disagree with zero-shot")
    else:
        lines.append(f"{len(ranked)} of {result['n']} examples disagree"
                     + (f"; the top {min(top, len(ranked))} by {gap}:" if ranked and top > 0 else ""))
    for i in ranked[:max(top, 0)]:
        row = result["examples"][i]
        text = " ".join(row["text"].split())
        lines.append(f"#{i}  {gap} {row['gap']:.3f}  {text[:100] + ('...' if len(text) > 100 else '')}")
        lines.append(f"    reference: {' '.join(row['reference'].split())[:160]}")
        for j, c in enumerate(result["columns"]):
            extra = f"p={row['probabilities'][j]:.3f}" if t.scores_labels else f"ROUGE-L {row['rougeL'][j]:.3f}"
            lines.append(f"    {c['label']}: {' '.join(row['outputs'][j].split())[:160]}  ({extra})")
    return "\n".join(lines)
