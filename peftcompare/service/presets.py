"""The reference experiments of issue 5 as data: one click (or one command) enqueues every run of a preset.

A preset names the Hub model it was published on and the built-in tiny model of the same family; offline
(or in tests) only the model changes, every other field of every spec stays the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from peftcompare.core import methods, tasks
from peftcompare.core.labels import method_label
from peftcompare.core.spec import RunSpec, with_offline_recipe
from peftcompare.core.tasks import DATASETS, get_task
from peftcompare.service import jobs

# a few examples, one epoch, one capacity per method: the whole preset in seconds, for smoke tests and a
# first look
QUICK = dict(train_samples=8, eval_samples=4, num_train_epochs=1, per_device_train_batch_size=8,
             per_device_eval_batch_size=8)
QUICK_TARGET_TOKENS = 16
VIEWS = {"capacity_curve": "metric against capacity and trainable parameters (Curves page)",
         "method_table": "per method: metric, change vs zero-shot and full fine-tuning, parameters, time, memory",
         "training_curves": "per-epoch training loss and evaluation metric, all methods on one chart"}


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    models: tuple[str, ...]  # the Hub models it was published on
    offline_model: str  # the built-in tiny model of the same family
    datasets: tuple[str, ...]
    methods: tuple[tuple[str, tuple[int, ...]], ...]  # (method, capacities); () for methods without a knob
    task_by_dataset: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)  # fields every run of the preset shares
    views: tuple[str, ...] = ("method_table", "training_curves")
    # --quick runs only these methods (() = all): a preset of dozens of methods stays a smoke test
    quick_methods: tuple[str, ...] = ()

    def method_names(self, quick: bool = False) -> list[str]:
        """Its methods; with quick, those a --quick run trains (quick_methods, where it names any)."""
        return [m for m, _ in self.methods if not (quick and self.quick_methods) or m in self.quick_methods]


def _task(dataset: str) -> str:

    return DATASETS[dataset].task


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("flan_t5_capacity", "FLAN-T5 capacity curves",
           "Prompt tuning, prefix tuning and LoRA across their capacities on FLAN-T5 small and base, "
           "for SST-2 classification and SAMSum summarization, against the zero-shot model.",
           ("google/flan-t5-small", "google/flan-t5-base"), "builtin:tiny-t5", ("sst2", "samsum"),
           (("zero_shot", ()), ("prompt", (10, 20, 50, 100)), ("prefix", (10, 20, 50, 100)),
            ("lora", (4, 8, 16, 32))),
           views=("capacity_curve", "method_table", "training_curves")),
    Preset("t5_small_imdb", "T5-small on IMDb",
           "Full fine-tuning against LoRA, AdaLoRA and P-tuning on IMDb reviews ('Review: {text}', 128 tokens).",
           ("t5-small",), "builtin:tiny-t5", ("imdb",),
           (("full", ()), ("lora", (8,)), ("adalora", (8,)), ("ptuning", (20,))),
           spec=dict(prompt_template="Review: {text}", max_source_length=128)),
    Preset("dialogue_summaries", "Dialogue summaries",
           "Zero-shot FLAN-T5-base against full fine-tuning and LoRA r=32 on DialogSum.",
           ("google/flan-t5-base",), "builtin:tiny-t5", ("dialogsum",),
           (("zero_shot", ()), ("full", ()), ("lora", (32,))),
           spec=dict(prompt_template="Summarize the following conversation.\n{text}\nSummary:")),
    Preset("gpt2_news", "GPT-2 news summaries",
           "GPT-2 on CNN/DailyMail 3.0.0 (article -> highlights): prompt tuning with 70 virtual tokens, LoRA r=8 "
           "and fine-tuning of the top 2 blocks.",
           ("gpt2",), "builtin:tiny-gpt2", ("cnn_dailymail",),
           (("prompt", (70,)), ("lora", (8,)), ("last_layers", (2,)))),
    Preset("bert_sst2", "BERT on SST-2",
           "bert-base-uncased with a classification head on SST-2: full fine-tuning, LoRA, prefix tuning and "
           "BitFit (bias terms only).",
           ("bert-base-uncased",), "builtin:tiny-bert", ("sst2",),
           (("full", ()), ("lora", (8,)), ("prefix", (20,)), ("bitfit", ()))),
    Preset("peft_zoo", "PEFT zoo on FLAN-T5",
           "Every PEFT method that trains an encoder-decoder at one budget, about 300k trainable parameters on "
           "flan-t5-small (or the nearest its knob allows), against LoRA r=8 and the zero-shot model, on SST-2 "
           "and SAMSum. --quick trains one method of each family.",
           ("google/flan-t5-small",), "builtin:tiny-t5", ("sst2", "samsum"),
           (("zero_shot", ()), ("lora", (8,)),
            *((name, (cap,) if cap else ()) for name, cap in methods.zoo_budget().items())),
           quick_methods=("zero_shot", "lora", "dora", "oft", "fourierft", "ln_tuning", "cartridge")),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


def preset_specs(name: str, offline: bool = False, quick: bool = False) -> list[RunSpec]:
    """Every run of a preset. Offline swaps the Hub model for the built-in tiny one, and (outside the quick
    budget, which stays a smoke test) the Hub learning rates and budget for the tiny model's recipe
    (spec.TINY_RECIPES), as a `train` on that model gets it; the preset's own fields stay."""
    p = get_preset(name)
    models = [p.offline_model] if offline else list(p.models)
    specs: list[RunSpec] = []
    for model in models:
        for dataset in p.datasets:
            task = _task(dataset)
            base = dict(task=task, dataset=dataset, model_name=model, **p.spec)
            if quick:
                base.update(QUICK)
                if tasks.get_task(task).generates:
                    base["max_target_length"] = QUICK_TARGET_TOKENS
            for method, capacities in p.methods:
                if method not in p.method_names(quick):
                    continue
                m = methods.get_method(method)
                # quick: the smallest capacity of each method (one point per method, not a curve)
                for cap in (capacities[:1] if quick else capacities) or (0,):
                    values = {**base, "method": method, "learning_rate": m.learning_rate}
                    if offline and not quick:
                        values = with_offline_recipe({**base, "method": method})
                    if m.capacity_name:
                        values["capacity"] = cap
                    specs.append(RunSpec.from_dict(values))
    seen, out = set(), []
    for s in specs:  # small and base share one tiny model offline
        if s.spec_hash() not in seen:
            seen.add(s.spec_hash())
            out.append(s)
    return out


def spec_hashes(name: str) -> set[str]:
    """Hashes of every variant of the preset (Hub or built-in model, full or quick budget)."""
    return {s.spec_hash() for off in (False, True) for q in (False, True) for s in preset_specs(name, off, q)}


def enqueue_preset(store, name: str, offline: bool = False, owner: str | None = None,
                   quick: bool = False) -> dict:
    """Queue the preset's runs that are neither stored nor already queued. Raises ValueError (one line)
    when public mode forbids a run, before anything is queued."""

    specs = preset_specs(name, offline, quick)
    # the one enqueue policy (public limits, duplicates skipped, quota, preflight): all of it or nothing
    out = jobs.submit(store, specs, owner=owner)
    return {"run_ids": out.run_ids, "skipped": len(specs) - len(out.run_ids), "total": len(specs)}


def preset_runs(store, name: str) -> list[dict]:
    hashes = spec_hashes(name)
    return [r for r in store.list_runs() if r.get("spec_hash") in hashes]


def epoch_frame(runs: list[dict]):
    """Long table of per-epoch training loss and evaluation metrics, one row per (run, epoch)."""
    import pandas as pd


    rows = []
    for r in runs:
        spec = r.get("spec")
        if spec is None:
            continue
        label = method_label(spec.method, spec.capacity)
        metric = get_task(spec.task).metric
        for e in r.get("epochs") or []:
            rows.append({"run_id": r["run_id"], "model_name": spec.model_name, "dataset": spec.dataset,
                         "method": spec.method, "capacity": spec.capacity, "label": label,
                         "epoch": e.get("epoch"), "train_loss": e.get("train_loss"),
                         # selection on dev: the epochs were scored on the dev split (dev_<metric>)
                         "metric_name": metric, "metric": e.get(metric, e.get(f"dev_{metric}")),
                         "split": e.get("eval_split", "validation")})
    return pd.DataFrame(rows, columns=["run_id", "model_name", "dataset", "method", "capacity", "label", "epoch",
                                       "train_loss", "metric_name", "metric", "split"])


# -- display helpers for the Presets page (plain data: the page adds the widgets) ---------------------------
PROBLEM_STATUSES = ("failed", "cancelled", "interrupted")


def method_rows(name: str, offline: bool = False) -> list[dict]:
    """The preset's methods as table rows; None where a method has no capacity knob (shown as a dash). The
    learning rate is the one its runs will train at (offline: the tiny model's recipe)."""
    rates = {s.method: s.learning_rate for s in preset_specs(name, offline, quick=False)}
    rows = []
    for method, caps in get_preset(name).methods:
        m = methods.get_method(method)
        rows.append({"method": m.title, "knob": m.capacity_name,
                     "capacities": ", ".join(map(str, caps)) if caps else None,
                     "learning_rate": (f"{rates.get(method, m.learning_rate):g}" if m.trains else None)})
    return rows


METHOD_ROW_LABELS = {"method": "Method", "knob": "Capacity knob", "capacities": "Capacities",
                     "learning_rate": "Learning rate"}


def run_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """The preset's runs by what the page says about them: active (queued or running), completed, and
    problems: the latest failed, cancelled or interrupted run of each experiment that no completed or
    active run has replaced (a retried run that succeeded is not a problem any more)."""
    active = [r for r in runs if r["status"] in ("queued", "running")]
    completed = [r for r in runs if r["status"] == "completed"]
    settled = {r.get("spec_hash") for r in active + completed}
    latest: dict[str, dict] = {}
    for r in runs:
        if r["status"] in PROBLEM_STATUSES and r.get("spec_hash") not in settled:
            key = r.get("spec_hash") or r["run_id"]
            if key not in latest or (r.get("created_at") or 0) >= (latest[key].get("created_at") or 0):
                latest[key] = r
    problems = sorted(latest.values(), key=lambda r: r.get("created_at") or 0)
    return {"active": active, "completed": completed, "problems": problems}


# method_table's columns as the page shows them: (label, number format); the rest are left out
METHOD_TABLE_COLUMNS = {
    "method": ("Method", None), "metric": ("{metric}", "%.4f"),
    "vs_zero_shot": ("vs zero-shot", "%+.4f"), "vs_zero_shot_pct": ("vs zero-shot %", "%+.1f%%"),
    "vs_full": ("vs full fine-tuning", "%+.4f"), "vs_full_pct": ("vs full fine-tuning %", "%+.1f%%"),
    "trainable_params": ("Trainable params", "localized"), "param_reduction_x": ("Fewer params than full", "%.0f×"),
    "train_seconds_per_epoch": ("Training s / epoch", "%.1f"), "peak_memory_mb": ("Peak memory MB", "%.0f"),
    "runs": ("Seeds", "%d"),
}


def method_table_display(table, metric_title: str):
    """analysis.method_table for people: methods by title with their capacity, only the columns above
    (in that order, those present), labels in METHOD_TABLE_COLUMNS; missing values stay missing (the page
    shows them as a dash)."""
    t = table.copy()

    def title(row) -> str:
        m = methods.METHODS.get(row["method"])
        if m is None:
            return str(row["method"])
        return m.title + (f" {int(row['capacity'])}" if m.capacity_name and row.get("capacity") == row.get("capacity")
                          and row.get("capacity") else "")

    t["method"] = t.apply(title, axis=1)
    cols = [c for c in METHOD_TABLE_COLUMNS if c in t]
    labels = {c: METHOD_TABLE_COLUMNS[c][0].format(metric=metric_title) for c in cols}
    return t[cols], labels
