"""The run spec: one validated, frozen description of a run.

The Train page builds it, the CLI parses it, the subprocess receives it as JSON, the store keeps it and
the Curves page groups by it. Field help text lives in the field metadata and is reused as CLI help and
widget help, so the library and the UI never drift.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import string
from dataclasses import dataclass, field, fields
from typing import Any

from peftcompare.core import methods, tasks

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("dev", "validation")
# what every method of a comparison gets the same amount of: epochs (the number of passes), optimizer steps,
# wall-clock training seconds, or estimated training FLOPs
BUDGETS = ("epochs", "steps", "seconds", "flops")
# 2: `selection` and `dev_samples`. A version-1 spec had no dev split: its best epoch was chosen on validation.
# 3: `budget` and `budget_value`; the default selection became "dev".
SPEC_VERSION = 3
# fields added after version 1, with the value that does what version 1 did: left out of the spec hash then
_HASH_NEUTRAL = {"selection": "validation", "dev_samples": 0, "budget": "epochs", "budget_value": 0.0,
                 "selection_metric": "metric"}

# -- the offline lesson: one recipe for the built-in tiny models ----------------------------------------
# builtin:tiny-* models have a few hundred thousand parameters, pretrained once per machine on generated
# text (engine/pretrain.py): the reference recipe (lr 5e-4, 3 epochs of 2000 examples) barely moves
# them. Every way into a run takes these fields from here for such a model unless it sets them itself: the
# Train page's defaults, `train`, `sweep`, `enqueue`, `zero-shot` and `params` without the flags, and the
# offline presets. Chosen on a development split carved from the bundled training sets (the last 20% of
# each *_train.jsonl held out), never on the validation sets (`python bench/bench_offline.py --dev`).
_TINY = {"learning_rate": 2e-2, "num_train_epochs": 6, "train_samples": 500, "warmup_ratio": 0.1,
         # LoRA's update scale alpha/r stays small at the learning rate prompts and prefixes need
         "lora_alpha": 8,
         # summaries of the samples are 15-40 tokens; evaluation in batches of 32 (a tiny model's generation
         # costs per step more than per row; 32 is a public instance's largest batch)
         "max_target_length": 64, "per_device_eval_batch_size": 32}
TINY_RECIPES: dict[str, dict[str, Any]] = {
    "builtin:tiny-t5": dict(_TINY),
    "builtin:tiny-bart": dict(_TINY),
    "builtin:tiny-gpt2": dict(_TINY),
    # an encoder with a fresh classification head: full fine-tuning diverges at 2e-2
    "builtin:tiny-bert": {**{k: v for k, v in _TINY.items() if k != "max_target_length"}, "learning_rate": 5e-3},
}
# where one method needs another value on a model (full fine-tuning moves every weight and is unstable at
# 2e-2) its registration says so (Method.tiny_recipe). A sweep (one learning rate for its grid) takes the
# recipe of the method it is built for, LoRA.
# the Train page's offline defaults (its offline model is builtin:tiny-t5)
OFFLINE_RECIPE = TINY_RECIPES["builtin:tiny-t5"]
# the sweep the app proposes offline: method -> capacities (Method.offline_grid)
OFFLINE_SWEEP: dict[str, tuple[int, ...]] = methods.offline_sweep()


def offline_recipe(model_name: str, task: str = "classification", method: str = "lora") -> dict[str, Any]:
    """The recipe fields of a built-in tiny model ({} for any other model), for either task."""
    name = str(model_name).strip()
    return {**TINY_RECIPES.get(name, {}), **_method_recipe(name, str(method))}


def _method_recipe(model_name: str, method: str) -> dict[str, Any]:
    m = methods.METHODS.get(method)
    return dict(m.tiny_recipe.get(model_name, {})) if m is not None else {}


def with_offline_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the fields a user set, as for RunSpec.from_dict) with the tiny model's recipe filling in
    every recipe field they do not set; unchanged for any other model (or no model: the Hub default)."""
    recipe = offline_recipe(values.get("model_name") or "", values.get("task") or "classification",
                            values.get("method") or "lora")
    return {**recipe, **values}


def _f(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class RunSpec:
    task: str = _f("classification", "Task type: 'classification' (label scoring, accuracy/F1) or "
                   "'summarization' (generation, ROUGE).", choices="tasks")
    method: str = _f("lora", "Adaptation method: lora, prefix, prompt, ... or zero_shot for the untouched "
                     "model.", choices="methods")
    capacity: int = _f(8, "The method's capacity knob: LoRA rank r, number of virtual tokens for "
                       "prompt/prefix tuning, number of unfrozen blocks for last_layers. Ignored by methods "
                       "without one.")
    model_name: str = _f("google/flan-t5-small", "A Hugging Face Hub id, a local directory, or a built-in "
                         "model (builtin:tiny-t5, builtin:random-flan-t5-small, ...).")
    dataset: str = _f("", "Dataset preset (sst2, samsum, imdb, dialogsum, cnn_dailymail, or a Hub id). "
                      "Empty: the task's reference dataset.")
    train_file: str = _f("", "Local training file (JSONL, CSV or parquet) with the dataset's columns. "
                         "Overrides the dataset's training split.")
    validation_file: str = _f("", "Local validation file (JSONL, CSV or parquet). Overrides the dataset's "
                              "validation split.")
    text_column: str = _f("", "Input column. Empty: the dataset preset's column (sentence, dialogue, ...).")
    target_column: str = _f("", "Target column (label or summary). Empty: the dataset preset's column.")
    prompt_template: str = _f("", "Input template with {text} for the input column. Empty: the dataset "
                              "preset's template (e.g. 'sst2: {text}').")
    answer_cue: str = _f("", "Decoder-only (causal) models: the text after the prompt that asks for the "
                         "answer, e.g. a newline and 'Sentiment:'; the answer follows after a space. Empty: the "
                         "dataset preset's cue. Seq2seq and encoder models ignore it.")
    train_samples: int = _f(2000, "Training examples, a deterministic subsample by seed (0 = all).")
    eval_samples: int = _f(0, "Validation examples to evaluate on (0 = all), the first N in a fixed order so "
                           "every run of a task sees the same ones.")
    num_train_epochs: int = _f(3, "Passes over the training subsample (with budget=epochs). The best epoch by "
                               "the selection split's metric (see selection) is kept.")
    learning_rate: float = _f(5e-4, "Peak learning rate of AdamW (linear decay).")
    per_device_train_batch_size: int = _f(16, "Training batch size per device.")
    per_device_eval_batch_size: int = _f(16, "Evaluation batch size per device.")
    seed: int = _f(42, "Random seed: data subsample, order and adapter initialisation.")
    max_source_length: int = _f(0, "Max input tokens (0 = the task's default: 256 classification, 512 "
                                "summarization).")
    max_target_length: int = _f(0, "Max target tokens (0 = the task's default: 8 classification, 128 "
                                "summarization).")
    lora_alpha: int = _f(0, "LoRA alpha (0 = max(16, 2r)).")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: str = _f("q,v", "Comma-separated module names LoRA-like methods adapt (q,v or q,k,v,o "
                             "for T5).")
    precision: str = _f("auto", "auto (bf16 autocast where the CPU/GPU supports it, else fp32), fp32, bf16 "
                        "or fp16 (GPU only).", choices=PRECISIONS)
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_ratio: float = _f(0.0, "Fraction of steps with linear warm-up.")
    selection: str = _f("dev", "Where the best epoch (and any hyper-parameter) is chosen: 'dev', a split carved "
                        "from the training data (disjoint from the training subsample, deterministic by seed), with "
                        "the validation split evaluated once on the chosen state; or 'validation', the original "
                        "experiment's protocol (chosen and reported on the same split: optimistic).",
                        choices=SELECTIONS)
    dev_samples: int = _f(0, "Size of the dev split (0 = 10% of train_samples, at least 100 where the data allows).")
    budget: str = _f("epochs", "What every method gets the same amount of: 'epochs' (num_train_epochs passes), "
                     "'steps' (optimizer steps), 'seconds' (wall-clock training time) or 'flops' (estimated "
                     "training FLOPs); the amount is budget_value. The dev (or validation) split is evaluated "
                     "after every pass over the data and when the budget is spent.", choices=BUDGETS)
    budget_value: float = _f(0.0, "The budget's amount: optimizer steps, seconds or FLOPs (e.g. 2e15). Ignored "
                             "with budget=epochs.")
    selection_metric: str = _f("metric", "What the best epoch is chosen by on the selection split: 'metric', the "
                               "task's metric (F1, ROUGE-L: summarization generates the whole split after every "
                               "epoch), or 'loss', the split's mean loss on its references (one forward, no "
                               "generation; the validation split is then scored once, on the chosen state).",
                               choices=("metric", "loss"))

    # -- construction -------------------------------------------------------------------------------
    def __post_init__(self):
        _validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        """Build from a plain dict (JSON, form values). Unknown keys are an error, types are coerced."""
        if not isinstance(data, dict):
            raise ValueError("spec: expected a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted((k for k in data if k not in known and k != "spec_version"), key=str)
        if unknown:  # names shown as typed when printable, else quoted: the message stays one line
            shown = ", ".join(k if isinstance(k, str) and k.isprintable() else repr(k) for k in unknown)
            raise ValueError(f"spec: unknown field(s) {shown[:300]}")
        kwargs = {}
        for name, value in data.items():
            if name == "spec_version":
                continue
            kwargs[name] = _coerce(name, known[name], value)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"spec: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("spec_version"), int) and data["spec_version"] < 2:
            data.setdefault("selection", "validation")  # what a version-1 run actually did
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({"spec_version": SPEC_VERSION, **self.to_dict()}, sort_keys=True)

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)

    # -- derived values -----------------------------------------------------------------------------
    def resolved(self) -> "RunSpec":
        """The same spec with every 'empty = default' field made explicit, as stored with a run."""
        ds = tasks.get_dataset(self.dataset or tasks.get_task(self.task).default_dataset)
        t = tasks.get_task(self.task)
        trains = methods.get_method(self.method).trains
        dev = self.selection == "dev" and trains  # a method that trains nothing has nothing to choose
        return self.replace(
            selection="dev" if dev else "validation",
            dev_samples=self.dev_samples if dev else 0,
            budget=self.budget if trains else "epochs",
            budget_value=self.budget_value if trains and self.budget != "epochs" else 0.0,
            selection_metric=self.selection_metric if trains else "metric",
            dataset=ds.name,
            text_column=self.text_column or ds.text_column,
            target_column=self.target_column or ds.target_column,
            prompt_template=self.prompt_template or ds.prompt_template,
            answer_cue=self.answer_cue or ds.answer_cue,
            max_source_length=self.max_source_length or ds.max_source_length or t.max_source_length,
            max_target_length=self.max_target_length or t.max_target_length,
            lora_alpha=self.lora_alpha or max(16, 2 * self.capacity),
            capacity=self.capacity if method_has_capacity(self.method) else 0,
        )

    def spec_hash(self) -> str:
        """Identity of what is asked: two specs with the same hash are the same experiment."""
        values = self.resolved().to_dict()
        for name, legacy in _HASH_NEUTRAL.items():  # a version-1 run and its version-2 twin are one experiment
            if values.get(name) == legacy:
                values.pop(name)
        if values.get("answer_cue") == tasks.get_dataset(values["dataset"]).answer_cue:
            values.pop("answer_cue")  # the dataset's own cue: the spec asks what it asked before the field existed
        payload = json.dumps(values, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def label(self) -> str:
        cap = f" {self.capacity}" if method_has_capacity(self.method) else ""
        return f"{self.method}{cap} · seed {self.seed}"


# -- the dev split's size: engine/data.split_dev draws it, the app's duration estimates count it --------
DEV_FRACTION = 0.1  # of train_samples (of the training data when it is all used)
DEV_MIN = 100  # where the data allows: a dev set of 20 moves the best epoch by noise alone


def dev_size(spec: RunSpec, available: int) -> int:
    """How many dev examples a spec asks for: dev_samples, else 10 % of train_samples, at least 100."""
    if spec.dev_samples:
        return spec.dev_samples
    return max(DEV_MIN, int(round(DEV_FRACTION * (spec.train_samples or available))))


def split_sizes(spec: RunSpec, available: int) -> tuple[int, int]:
    """(training, dev) examples a spec gets out of `available` training rows: the subsample as without a dev
    split, the dev split from the rows it leaves, else carved out of the subsample (which keeps half)."""
    chosen = min(spec.train_samples or available, available)
    if spec.selection != "dev" or not methods.get_method(spec.method).trains:
        return chosen, 0
    rest, want = available - chosen, dev_size(spec, available)
    if rest >= want:
        return chosen, want
    need = max(0, min(want - rest, chosen // 2))
    return chosen - need, rest + need


def method_has_capacity(method: str) -> bool:
    return methods.get_method(method).capacity_name is not None


def field_help(name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in fields(RunSpec)}[name]


def spec_fields():
    return fields(RunSpec)


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
    if value is None:
        return f.default
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _validate(s: RunSpec) -> None:
    for f in fields(s):
        value = getattr(s, f.name)
        expected = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(s, f.name, float(value))
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ValueError(f"{f.name}: expected {expected.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name}: must be a finite number, got {value!r}")
        if isinstance(value, str) and ("\x00" in value or len(value) > 4096):
            raise ValueError(f"{f.name}: text is too long or contains a NUL byte")
    if s.task not in tasks.TASKS:
        raise ValueError(f"task: unknown task {s.task!r} (choose from {', '.join(tasks.TASKS)})")
    m = methods.get_method(s.method)  # unknown, or a PEFT type refused with its reason: one line either way
    if m.capacity_name is not None:
        if s.capacity <= 0:
            raise ValueError(f"capacity: {m.capacity_name} must be > 0, got {s.capacity}")
        if s.capacity > m.max_capacity:
            raise ValueError(f"capacity: {m.capacity_name} must be <= {m.max_capacity}, got {s.capacity}")
    if s.dataset and s.dataset not in tasks.DATASETS and "/" not in s.dataset:
        raise ValueError(f"dataset: unknown dataset {s.dataset!r} (choose from {', '.join(tasks.DATASETS)} "
                         "or give a Hub id like owner/name)")
    if s.dataset in tasks.DATASETS and tasks.DATASETS[s.dataset].task != s.task:
        raise ValueError(f"dataset: {s.dataset} is a {tasks.DATASETS[s.dataset].task} dataset, "
                         f"not {s.task}")
    if not s.model_name.strip():
        raise ValueError("model_name: must not be empty")
    positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs"]
    if m.trains:
        positive.append("learning_rate")
    for name in positive:
        if getattr(s, name) <= 0:
            raise ValueError(f"{name}: must be > 0, got {getattr(s, name)}")
    for name in ["train_samples", "eval_samples", "max_source_length", "max_target_length", "lora_alpha",
                 "seed", "weight_decay"]:
        if getattr(s, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(s, name)}")
    if s.per_device_train_batch_size > 4096 or s.per_device_eval_batch_size > 4096:
        raise ValueError("batch size: must be <= 4096")
    if s.num_train_epochs > 1000:
        raise ValueError(f"num_train_epochs: must be <= 1000, got {s.num_train_epochs}")
    if s.max_source_length > 8192 or s.max_target_length > 2048:
        raise ValueError("max_source_length/max_target_length: too large (8192 / 2048 at most)")
    if not 0 <= s.lora_dropout < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {s.lora_dropout}")
    if not 0 <= s.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio: must be in [0, 1), got {s.warmup_ratio}")
    if s.selection not in SELECTIONS:
        raise ValueError(f"selection: must be one of {', '.join(SELECTIONS)}, got {s.selection!r}")
    if s.dev_samples < 0:
        raise ValueError(f"dev_samples: must be >= 0, got {s.dev_samples}")
    if s.selection_metric not in ("metric", "loss"):
        raise ValueError(f"selection_metric: must be metric or loss, got {s.selection_metric!r}")
    if s.budget not in BUDGETS:
        raise ValueError(f"budget: must be one of {', '.join(BUDGETS)}, got {s.budget!r}")
    if s.budget != "epochs" and m.trains and not s.budget_value > 0:
        raise ValueError(f"budget_value: budget={s.budget} needs a positive amount (--budget_value), "
                         f"got {s.budget_value:g}")
    if s.budget == "steps" and not float(s.budget_value).is_integer():
        raise ValueError(f"budget_value: a number of steps must be whole, got {s.budget_value:g}")
    if s.budget_value < 0 or (s.budget == "steps" and s.budget_value > 10**8):
        raise ValueError(f"budget_value: must be >= 0 (and at most 1e8 steps), got {s.budget_value:g}")
    if s.precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")
    mods = [t.strip() for t in s.target_modules.split(",")]
    if not all(t and t.replace("_", "").replace(".", "").isalnum() for t in mods):
        raise ValueError(f"target_modules: expected comma-separated module names, got {s.target_modules!r}")
    if len(s.answer_cue) > 200:
        raise ValueError("answer_cue: at most 200 characters")
    if s.answer_cue != s.answer_cue.rstrip(" \t"):
        raise ValueError("answer_cue: must not end with a space (the answer follows the cue after one)")
    if s.prompt_template and "{text}" not in s.prompt_template:
        raise ValueError("prompt_template: must contain {text}")
    if s.prompt_template:
        # parsed, never formatted: a format spec like {text:>999999999} would allocate that many bytes
        try:
            fields_ = [(name, spec_, conv) for _, name, spec_, conv in string.Formatter().parse(s.prompt_template)
                       if name is not None]
        except ValueError:
            fields_ = [None]
        if any(f != ("text", "", None) for f in fields_):
            raise ValueError("prompt_template: only {text} may appear in braces (write {{ for a literal brace)")
