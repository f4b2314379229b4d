"""The experiment report: one self-contained HTML file a reviewer can open offline (no CDN, no script).

It states the protocol (model, data fingerprints, budgets, selection rule, seeds, learning rates chosen),
draws the curves with their 95 % intervals (inline SVG), tabulates every (method, capacity) with its interval
and its change against zero-shot and full fine-tuning, marks adjacent differences a paired test on the same
examples cannot tell apart, shows a few validation examples side by side, and lists the library versions.
"""
from __future__ import annotations

import hashlib
import html
import io
from collections import Counter

from peftcompare.core import methods, tasks
from peftcompare.service import summary as summary_mod
from peftcompare.service.curves import method_color

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#a15c00}.muted{color:#777}code{background:#f4f4f4;padding:0 3px}"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def curve_svg(rows: list[dict], metric: str) -> str:
    """Mean over seeds against trainable parameters, one line per method with its 95 % band; the references
    (zero-shot, full fine-tuning) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for name, rs in by_method.items():
        color = method_color(name)
        if methods.is_reference(name):
            ax.axhline(rs[0]["mean"], linestyle="--", color=color, linewidth=1,
                       label=f"{methods.title(name)}: {rs[0]['mean']:.3f}")
            continue
        rs = sorted(rs, key=lambda r: r["trainable_params"] or 0)
        xs = [r["trainable_params"] for r in rs]
        ax.plot(xs, [r["mean"] for r in rs], marker="o", color=color,
                label=f"{methods.title(name)} (n={min(r['n_seeds'] for r in rs)}+ seeds)")
        if all(r["ci_low"] is not None for r in rs):
            ax.fill_between(xs, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], color=color, alpha=0.18)
    if any(not methods.is_reference(m) for m in by_method):
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{tasks.metric_title(metric)} (validation, mean over seeds; band: 95 % t-interval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # inline: drop the XML prolog and doctype


def _deltas(rows: list[dict]) -> dict[tuple, tuple]:
    refs = {m: r["mean"] for r in rows for m in [r["method"]] if methods.is_reference(m)}
    zs = next((v for m, v in refs.items() if m in methods.by_role(methods.ROLE_BASELINE)), None)
    full = next((v for m, v in refs.items() if m in methods.by_role(methods.ROLE_FULL)), None)
    return {(r["method"], r["capacity"]): (None if zs is None else r["mean"] - zs,
                                           None if full is None else r["mean"] - full) for r in rows}


def _validation_prints(runs: list[dict], answers) -> str:
    """A fingerprint of the validation examples each run was scored on (from its stored answers' content
    keys): one value means every number in the report is over the same examples."""
    seen = Counter()
    for r in runs:
        per = answers(r["run_id"])
        if per and per.get("key"):
            seen[hashlib.sha256("".join(per["key"]).encode()).hexdigest()[:16]] += 1
    return ", ".join(f"<code>{_e(v)}</code> ({n})" for v, n in seen.most_common()) or "–"


def _protocol(runs: list[dict], rows: list[dict], answers=None) -> str:
    specs = [r["spec"] for r in runs]
    count = Counter

    def values(attr):
        return ", ".join(f"{_e(v)} ({n})" for v, n in count(getattr(s, attr) for s in specs).most_common())

    def prints(key):
        return ", ".join(f"<code>{_e(v)}</code> ({n})" for v, n in count(r.get(key) for r in runs
                                                                         if r.get(key)).most_common()) or "–"

    trained = [r for r in runs if methods.trains(r["spec"].method)]
    def tried(r):
        return ", ".join(f"{x:g}" for x in r["learning_rates_tried"])

    selected = ", ".join(f"{_e(r['label'])}: {r['learning_rate']:g} (of {tried(r)})" for r in rows
                         if len(r["learning_rates_tried"]) > 1) or "one learning rate per method (no search)"
    on = {r["selected_on"] for r in rows} - {"none"}
    rule = ("best epoch (and learning rate) chosen on a dev split carved from the training data (disjoint from "
            "the training subsample, drawn by seed); the validation split evaluated once, on the chosen state"
            if on == {"dev"} else
            "best epoch chosen on the validation split whose score is reported (the original experiment's "
            "protocol: optimistic)" if on == {"validation"} else
            "nothing trained" if not on else "MIXED (" + ", ".join(sorted(on)) + "): rows say which")
    dev_sizes = Counter((r.get("selection") or {}).get("examples") for r in trained
                        if (r.get("selection") or {}).get("on") == "dev")
    budgets = Counter(summary_mod.budget_text(r["spec"]) for r in trained)
    items = [("model", values("model_name")), ("model fingerprints (weights)", prints("model_fingerprint")),
             ("dataset", values("dataset")),
             ("data fingerprints (train, dev and validation; the dev split is drawn by seed)",
              prints("data_fingerprint")),
             ("validation examples fingerprint", _validation_prints(runs, answers or (lambda rid: None))),
             ("training examples", values("train_samples")),
             ("dev examples", ", ".join(f"{v} ({n})" for v, n in dev_sizes.most_common()) or "–"),
             ("validation examples", ", ".join(f"{v} ({n})" for v, n in Counter(
                 (r.get("metrics") or {}).get("eval_samples") for r in runs).most_common())),
             ("budget (every method the same)", ", ".join(f"{_e(v)} ({n})" for v, n in budgets.most_common()) or "–"),
             ("batch size", values("per_device_train_batch_size")), ("seeds", values("seed")),
             ("selection rule", _e(rule)), ("learning rates chosen", selected),
             ("learning rates used", ", ".join(f"{v:g} ({n})" for v, n in Counter(
                 r["spec"].learning_rate for r in trained).most_common()) or "–"), ("precision", values("precision"))]
    return _table(["", "value"], [[_e(k), v] for k, v in items])


def _examples(rows: list[dict], answers, k: int = 6) -> str:
    """A few validation examples side by side: the first seed's answer of each row, examples where the rows
    disagree first. `answers(run_id)` gives a run's stored per-example answers (None without)."""
    cols = []
    for r in rows:
        per = answers(r["run_ids"][0]) if r["run_ids"] else None
        if per and per.get("key"):
            cols.append((r["label"], {key: i for i, key in enumerate(per["key"])}, per))
    if not cols:
        return "<p class='muted'>No stored per-example answers for these runs.</p>"
    first = cols[0][2]
    shared = [key for key in first["key"] if all(key in index for _, index, _ in cols)]

    def answers_of(key):
        return [per["prediction"][index[key]] for _, index, per in cols]

    shared.sort(key=lambda key: len(set(answers_of(key))) == 1)  # disagreements first, stable otherwise
    body = []
    for key in shared[:k]:
        i = cols[0][1][key]
        text = first["input"][i] if first.get("input") else None
        body.append([_e((text or "")[:240]) or "<span class='muted'>(text not stored)</span>",
                     _e(first["reference"][i]), *[_e(str(a)[:240]) for a in answers_of(key)]])
    return _table(["input", "reference", *[label for label, _, _ in cols]], body)


def _versions(runs: list[dict]) -> str:
    keys = ["peftcompare", "peftcompare_commit", "torch", "transformers", "peft", "accelerate", "python", "cpu", "gpu"]
    rows = []
    for key in keys:
        seen = Counter(str((r.get("versions") or {}).get(key)) for r in runs if (r.get("versions") or {}).get(key))
        if seen:
            rows.append([_e(key), ", ".join(f"{_e(v)} ({n})" for v, n in seen.most_common())])
    return _table(["package", "version (runs)"], rows)


def build(runs: list[dict], task: str, significance=None, title: str = "", answers=None) -> str:
    """The report's HTML. `significance(row_a, row_b) -> PairedTest-like | None` marks adjacent rows of the
    ranking that a paired test on the same examples cannot separate (None: no stored answers);
    `answers(run_id)` gives a run's stored per-example answers for the examples section."""
    t = tasks.get_task(task)
    task_runs = [r for r in runs if r.get("spec") is not None and r["spec"].task == task
                 and r.get("status") == "completed"]
    rows = summary_mod.summarize(task_runs, task)
    deltas = _deltas(rows)
    table_rows = []
    ordered = sorted(rows, key=lambda r: -r["mean"])
    for i, r in enumerate(ordered):
        mark = ""
        if significance is not None and i + 1 < len(ordered):
            test = significance(r, ordered[i + 1])
            if test is not None:
                mark = (f"{test['difference']:+.4f}, p={test['p_value']:.3f}"
                        + (" ≈ not significant" if not test["significant"] else " significant"))
            else:
                mark = "no stored answers"
        dz, df = deltas[(r["method"], r["capacity"])]
        note = r["warning"]
        table_rows.append([_e(r["label"]), f"{r['mean']:.4f}",
                           f"[{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]", str(r["n_seeds"]),
                           "–" if r["learning_rate"] is None else f"{r['learning_rate']:g}", _e(r["selected_on"]),
                           _e(r["budget"]), f"{r['trainable_params'] or 0:,}",
                           _fmt(dz, 4), _fmt(df, 4), _e(mark),
                           f"<span class='warn'>{_e(note)}</span>" if note else ""])
    head = ["method", t.metric_title, "95 % CI (t)", "seeds", "learning rate", "selected on", "budget", "trainable",
            "Δ zero-shot", "Δ full", "paired test vs next row", "note"]
    body = [f"<h1>{_e(title or f'peftcompare report: {task}')}</h1>",
            f"<p>{len(task_runs)} completed runs. Metric: validation {_e(t.metric_title)}. Each row is the mean "
            "over seeds of the learning rate selected for it; intervals are two-sided 95 % Student t-intervals "
            "over seeds (n − 1 degrees of freedom; none from one seed, rows with fewer than 3 seeds are marked). "
            "Paired tests are bootstrap tests (2000 resamples) on the same validation examples, seeds averaged per "
            "side, each row against the next one down.</p>",
            "<h2>Protocol</h2>", _protocol(task_runs, rows, answers) if task_runs else "<p>No completed runs.</p>",
            "<h2>Curves</h2>", curve_svg(rows, t.metric) if rows else "<p>No completed runs.</p>",
            "<h2>Results</h2>", _table(head, table_rows, numeric={1, 2, 3, 4, 7, 8, 9}),
            "<h2>Examples</h2>", _examples(ordered, answers or (lambda rid: None)),
            "<h2>Versions</h2>", _versions(task_runs)]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + _e(title or f"peftcompare: {task}")
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>")


def build_for_store(store, task: str, title: str = "") -> str:
    """The report of a task from a store: its completed runs, paired tests and examples from stored answers."""
    from peftcompare.service import significance as sig

    runs = store.list_runs(status=("completed",), task=task)
    rows = summary_mod.summarize(runs, task)
    tests = sig.adjacent(store, rows, runs)

    def significance(row_a, row_b):
        return tests.get(sig._row_key(row_a))

    return build(runs, task, significance, title, answers=store.examples)
