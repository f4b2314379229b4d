"""Helpers shared by the Streamlit pages: cached store and engine, machine facts, formatting, ETA,
uploads and bundle zips as bytes.

Nothing here imports torch at module level: the app must start in a couple of seconds, so heavy
modules are imported inside the functions that need them.
"""
from __future__ import annotations

import functools
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from peftcompare.core import labels, methods, tasks
from peftcompare.core.spec import RunSpec, split_sizes
from peftcompare.service import comparing, jobs, runs, system
from peftcompare.service import policy as public
from peftcompare.service.bundle import LIMITS, export_bundle, import_bundle
from peftcompare.service.store import Store, dir_bytes, resolve_home

OFFLINE_MODEL = "builtin:tiny-t5"
PACK_SIZE = 4  # runs the sweep form's "Train together" packs into one training process
UPLOAD_DIR = Path("results") / "uploads"
PAGES = {  # page file -> (title, icon); app.py and st.page_link use the same table
    "pages/home.py": ("Home", ":material/home:"),
    "pages/train.py": ("Train", ":material/model_training:"),
    "pages/adapters.py": ("Adapters", ":material/inventory_2:"),
    "pages/compare.py": ("Compare", ":material/compare:"),
    "pages/curves.py": ("Curves", ":material/monitoring:"),
    "pages/presets.py": ("Presets", ":material/tune:"),
}


# -- cached resources (one per process, keyed by the store home) ------------------------------------
def store() -> Store:
    return _open_store(str(resolve_home()))


@st.cache_resource(show_spinner=False)
def _open_store(home: str) -> Store:
    return Store(home)


def engine():
    """(CompareEngine, lock): one base model per process, shared by every session; the lock serialises
    calls because the engine swaps adapters in and out of one model."""
    return _make_engine(str(resolve_home()))


@st.cache_resource(show_spinner="Loading the compare engine ...")
def _make_engine(home: str):
    import_stack()

    return comparing.open_engine(Store(home)), threading.Lock()


def reconcile_once() -> list[str]:
    """Mark runs whose process is gone as interrupted, once per browser session."""
    if st.session_state.get("_reconciled_home") == str(resolve_home()):
        return []

    fixed = jobs.reconcile(store())
    st.session_state["_reconciled_home"] = str(resolve_home())
    return fixed


def visitor_id() -> str:
    if "visitor_id" not in st.session_state:
        st.session_state["visitor_id"] = "visitor-" + uuid.uuid4().hex[:12]
    return st.session_state["visitor_id"]


def hub_online() -> bool:
    # HF_HUB_OFFLINE answers at once; a real probe is cached for a few minutes
    if system.hub_offline_forced():
        return False
    return _probe_hub(system.hub_endpoint())


@st.cache_data(ttl=300, show_spinner=False)
def _probe_hub(endpoint: str) -> bool:
    # keyed by the endpoint: a changed HF_ENDPOINT is probed afresh, not answered from the old cache
    return system.hub_reachable(endpoint=endpoint)


def hub_endpoint() -> str:
    return system.hub_endpoint()


def default_model(online: bool) -> str:
    return RunSpec().model_name if online else OFFLINE_MODEL


# -- machine facts without importing torch ------------------------------------------------------------
def device_summary() -> dict:
    """Device and precision the app will use. Uses torch if it is already loaded, else cheap probes."""
    return system.device_summary()


def import_stack() -> None:
    """torch, transformers and peft, imported once under one lock (see system.import_stack)."""
    system.import_stack()


def warm_imports() -> None:
    """Import the training stack in the background once, after the first page is drawn, so the first
    parameter count or comparison does not pay for it."""
    _start_warmup()


@st.cache_resource(show_spinner=False)
def _start_warmup():
    def work():
        try:
            import_stack()
        except Exception:  # noqa: BLE001 - warming is best effort; the real import reports errors
            pass

    t = threading.Thread(target=work, name="peftcompare-warmup", daemon=True)
    t.start()
    return t


# -- formatting -------------------------------------------------------------------------------------
def fmt_int(n) -> str:
    return "—" if n is None or n != n else f"{int(n):,}"


def fmt_bytes(n) -> str:
    if n is None or n != n:
        return "—"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_duration(seconds) -> str:
    if seconds is None or seconds != seconds:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_time(ts) -> str:
    return "—" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def run_label(run: dict) -> str:
    spec = run.get("spec")
    if spec is None:
        return run["run_id"]
    return labels.run_label(spec, run["run_id"], task=True)


def primary_metric(task: str) -> str:
    return tasks.get_task(task).metric


def log_tail(path: Path, lines: int = 15, max_bytes: int = 16_384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


# -- the trainable-parameter count, the same code path as `python -m peftcompare params` ---------------
@st.cache_data(show_spinner=False, max_entries=256)
def count_params(spec_json: str) -> tuple[int, int]:
    import_stack()
    return runs.count_parameters(RunSpec.from_json(spec_json))


# -- sweeps and durations ---------------------------------------------------------------------------
def method_choices(trainable: bool = False) -> list[str]:
    """The Train page's method pickers: every method (or every one that trains), grouped by family in
    METHOD_FAMILIES' order, so related methods sit together."""
    return [m.name for ms in methods.by_family().values() for m in ms if m.trains or not trainable]


def method_choice_label(name: str) -> str:
    """'LoRA · additive low-rank': a picker's option, its family after the title."""
    m = methods.get_method(name)
    return f"{m.title} · {m.method_family}" if m.method_family else m.title


def method_families_markdown() -> str:
    """One line per family: its description and its methods' titles (the Train page's method guide)."""
    return "\n".join(f"- **{family}**: {methods.METHOD_FAMILIES[family]} "
                     f"({', '.join(m.title for m in ms)})" for family, ms in methods.by_family().items())


def default_capacities(method: str, online: bool) -> tuple[int, ...]:
    """The capacities a sweep proposes for `method` (its own input on the Train page).

    Online: the method's reference grid (methods.METHODS[name].capacities). Offline the tiny model is
    used, and this is where its offline defaults plug in; until they exist it is the reference grid too.
    Methods without a capacity knob: ()."""
    m = methods.get_method(method)
    if m.capacity_name is None:
        return ()
    return tuple(m.capacities)


def grid_specs(base: RunSpec, method_names: list[str], capacities: dict[str, list[int]] | list[int],
               seeds: list[int], zero_shot: bool, learning_rates: list[float] | None = None,
               method_rates: bool = False) -> list[RunSpec]:
    """The sweep form's grid (service.runs.grid_specs: the same grid as `sweep`)."""
    return runs.grid_specs(base, method_names, capacities, seeds, zero_shot, learning_rates, method_rates)


def _list_parts(text: str) -> list[str]:
    """The entries of a list typed into a box: separated by commas, semicolons or spaces."""
    return [part.strip() for part in str(text).replace(";", ",").replace(" ", ",").split(",") if part.strip()]


def parse_float_list(text: str, what: str) -> list[float]:
    """'1e-4, 5e-4' -> [0.0001, 0.0005]; empty -> []; one-line ValueError in the user's words."""
    out = []
    for part in _list_parts(text):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{what}: expected numbers like 1e-4, 5e-4, got {part!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"{what}: each must be a positive number, got {part!r}")
        out.append(value)
    return list(dict.fromkeys(out))


def parse_int_list(text: str, what: str) -> list[int]:
    out = []
    for part in _list_parts(text):
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"{what}: expected whole numbers separated by commas, got {part!r}") from None
    return list(dict.fromkeys(out))


# rows of the Hub splits the dataset presets name (what a run sees with 0 = all)
HUB_SPLIT_ROWS = {("sst2", "train"): 67349, ("sst2", "validation"): 872, ("samsum", "train"): 14732,
                  ("samsum", "validation"): 818, ("imdb", "train"): 25000, ("imdb", "test"): 25000,
                  ("dialogsum", "train"): 12460, ("dialogsum", "validation"): 500,
                  ("cnn_dailymail", "train"): 287113, ("cnn_dailymail", "validation"): 13368}


def _split_rows(spec: RunSpec, split: str, online: bool) -> int | None:
    """Rows of the spec's train or validation data without loading it: the bundled sample offline, the
    preset's Hub split online; None for a user file or an ad-hoc Hub dataset."""
    if spec.train_file if split == "train" else spec.validation_file:
        return None
    ds = tasks.get_dataset(spec.dataset or tasks.get_task(spec.task).default_dataset)
    name = ds.train_split if split == "train" else ds.validation_split
    if online:
        return HUB_SPLIT_ROWS.get((ds.name, name))
    if not ds.sample_prefix:
        return None
    for candidate in (name, "validation", "test"):  # data._sample_file's order
        path = tasks.SAMPLES_DIR / f"{ds.sample_prefix}_{candidate}.jsonl"
        if path.is_file():
            try:
                return _count_rows(str(path), path.stat().st_mtime_ns)
            except OSError:
                return None
    return None


@functools.lru_cache(maxsize=64)
def _count_rows(path: str, mtime_ns: int) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def train_size(spec: RunSpec, online: bool) -> int | None:
    """How many training examples the run will see, when it can be known without loading the data."""
    n, rows = spec.train_samples or None, _split_rows(spec, "train", online)
    return min(n, rows) if n and rows else (n or rows)


def eval_size(spec: RunSpec, online: bool) -> int | None:
    """How many validation examples each evaluation pass scores (None: unknown without loading)."""
    n, rows = spec.eval_samples or None, _split_rows(spec, "validation", online)
    return min(n, rows) if n and rows else (n or rows)


@dataclass(frozen=True)
class Timing:
    """What one run of a (model, task) costs, in parts. `startup_s` is the run minus its training and
    evaluation loops: process start, imports, model and data load, tokenization and saving the adapter.
    Training is per example and epoch, evaluation per example and pass (one pass after every epoch).
    `runs`: how many completed runs were measured; 0 for a FALLBACK guess."""
    startup_s: float
    train_s_per_example: float
    eval_s_per_example: float
    runs: int = 0


# Used until a run of the (model, task) has completed, and said so on the page. The tiny model's figures
# were measured with the offline recipe on a 2-core CPU and rounded up; other models get a deliberately
# slow guess for the device, so a first estimate is not a promise.
FALLBACK_TIMINGS = {
    ("builtin:tiny-t5", "classification"): Timing(6.0, 0.010, 0.005),
    ("builtin:tiny-t5", "summarization"): Timing(8.0, 0.025, 0.20),
}
FALLBACK_BY_DEVICE = {
    ("cpu", "classification"): Timing(30.0, 1 / 3, 0.05), ("cpu", "summarization"): Timing(30.0, 1.0, 1.5),
    ("cuda", "classification"): Timing(20.0, 1 / 40, 0.01), ("cuda", "summarization"): Timing(20.0, 1 / 15, 0.2),
}


def _eval_parts(run: dict) -> tuple[float, int]:
    """(seconds, examples) of every evaluation pass of a run, as the run recorded them: the selection split's
    after each epoch, and the validation split's once at the end (a dev-selected run's evaluation, or the
    original protocol's generate-and-parse pass), the part of eval_runtime the epochs do not hold."""
    epochs = [e for e in run.get("epochs") or [] if e.get("eval_seconds") is not None and e.get("eval_samples")]
    if epochs:  # per pass, as recorded by the training loop
        secs, n = sum(e["eval_seconds"] for e in epochs), sum(e["eval_samples"] for e in epochs)
        metrics = run.get("metrics") or {}
        if (any(e.get("eval_split") == "dev" for e in epochs) or "accuracy_generate" in metrics) \
                and metrics.get("eval_samples") and run.get("eval_runtime") is not None:
            secs, n = max(secs, run["eval_runtime"]), n + metrics["eval_samples"]
        return secs, n
    n = (run.get("metrics") or {}).get("eval_samples")
    if n and run.get("eval_runtime") is not None:  # zero-shot: one pass
        return run["eval_runtime"], n * max(1, len(run.get("epochs") or []))
    return 0.0, 0


def measured_timing(runs: list[dict], model_name: str, task: str) -> Timing | None:
    """The parts of this (model, task)'s completed runs, from what each run recorded: started_at to
    finished_at, train_runtime, eval_runtime, train_samples_per_second and the examples each evaluation
    pass scored. Start-up is the median run's; training and evaluation are pooled (all seconds over all
    examples), so a big run weighs more than a tiny one whose first slow steps dominate its rate.
    None when none of its runs has completed with those times."""
    done = [r for r in runs if r.get("status") == "completed" and r.get("model_name") == model_name
            and r.get("task") == task and r.get("started_at") and r.get("finished_at")
            and r.get("train_runtime") is not None and r.get("eval_runtime") is not None]
    if not done:
        return None
    startup = [max(0.0, r["finished_at"] - r["started_at"] - r["train_runtime"] - r["eval_runtime"]) for r in done]
    trained = [r for r in done if r.get("train_samples_per_second") and r["train_runtime"] > 0]
    seen = sum(r["train_runtime"] * r["train_samples_per_second"] for r in trained)
    evals = [_eval_parts(r) for r in done]
    eval_n = sum(n for _, n in evals)
    guess = fallback_timing(model_name, task)
    return Timing(statistics.median(startup),
                  sum(r["train_runtime"] for r in trained) / seen if seen else guess.train_s_per_example,
                  sum(t for t, _ in evals) / eval_n if eval_n else guess.eval_s_per_example, len(done))


def fallback_timing(model_name: str, task: str, device: str = "cpu") -> Timing:
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return FALLBACK_TIMINGS.get((model_name, task)) or FALLBACK_BY_DEVICE[(kind, task)]


def run_seconds(spec: RunSpec, timing: Timing, online: bool) -> float | None:
    """Start-up + training + every evaluation pass of one run; None when a size cannot be known."""
    trains = methods.get_method(spec.method).trains
    n_eval = eval_size(spec, online)
    n_train = train_size(spec, online) if trains else 0
    if n_eval is None or n_train is None:
        return None
    if not trains:
        return timing.startup_s + timing.eval_s_per_example * n_eval
    rows = _split_rows(spec, "train", online)
    n_train, n_dev = split_sizes(spec, rows if rows else max(n_train, 1) * 10)  # a file: plenty left for dev
    # epochs scored on the dev split (or validation), then the validation split once at the end: the dev
    # protocol's evaluation, or the original protocol's generate-and-parse pass where the model can generate
    final = n_dev > 0 or (tasks.get_task(spec.task).scores_labels and model_family_guess(spec.model_name) != "encoder")
    seen, passes = n_train * spec.num_train_epochs, spec.num_train_epochs  # a FLOPs budget: guessed so too
    if spec.budget == "steps":  # the budget's examples, scored after each pass over the data and at its end
        seen = spec.budget_value * spec.per_device_train_batch_size
        passes = max(1, -(-int(seen) // max(1, n_train)))
    train_s = spec.budget_value if spec.budget == "seconds" else timing.train_s_per_example * seen
    scored = (n_dev or n_eval) * passes + (n_eval if final else 0)
    return timing.startup_s + train_s + timing.eval_s_per_example * scored


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: a size is unknown (all rows of a file or an ad-hoc Hub dataset)
    measured: bool  # every (model, task) of the specs has completed runs to measure
    basis: str  # one sentence for the page: where the figure comes from


def estimate(specs: list[RunSpec], runs: list[dict], online: bool, device: str = "cpu") -> Estimate:
    """How long `specs` take one after another: start-up, training and evaluation of each, from the
    measured parts of past runs of the same (model, task), else the stated fallback guess."""
    total, measured_n, guessed = 0.0, {}, []
    for spec in specs:
        timing = measured_timing(runs, spec.model_name, spec.task)
        if timing is None:
            timing = fallback_timing(spec.model_name, spec.task, device)
            if (spec.model_name, spec.task) not in guessed:
                guessed.append((spec.model_name, spec.task))
        else:
            measured_n[(spec.model_name, spec.task)] = timing.runs
        secs = run_seconds(spec, timing, online)
        if secs is None:
            return Estimate(None, not guessed, "Unknown: the run uses all examples of a file or a Hub dataset, "
                                               "and their number is not known before it loads them.")
        total += secs
    if guessed:
        what = ", ".join(f"{m} on {t}" for m, t in guessed)
        basis = (f"A rough guess: no run of {what} has finished yet, so typical times are assumed until "
                 "one has.")
    else:
        n = sum(measured_n.values())
        basis = (f"Measured: from the start-up, training and evaluation times of {n} finished "
                 f"run{'s' * (n != 1)} of the same model and task.")
    return Estimate(total, not guessed, basis)


def estimate_seconds(specs: list[RunSpec], runs: list[dict], online: bool, device: str = "cpu"
                     ) -> tuple[float | None, bool]:
    """(total seconds or None when unknown, measured?) for running `specs` one after another."""
    e = estimate(specs, runs, online, device)
    return e.seconds, e.measured


def live_eta(run: dict, runs: list[dict], online: bool) -> float | None:
    """Seconds left for a running run: the training loop's own ETA (steps left at its measured pace) plus
    the evaluation passes still to come (at this run's measured pass time, else past runs') and saving."""
    spec = run.get("spec")
    if spec is None or run.get("status") != "running":
        return None
    done_epochs = [e for e in run.get("epochs") or [] if e.get("eval_seconds") is not None]
    timing = measured_timing(runs, spec.model_name, spec.task) or fallback_timing(spec.model_name, spec.task)
    trains = methods.get_method(spec.method).trains
    passes_left = (spec.num_train_epochs if trains else 1) - len(done_epochs)
    if done_epochs:
        per_pass = statistics.median(e["eval_seconds"] for e in done_epochs)
    else:
        n_eval = eval_size(spec, online)
        per_pass = timing.eval_s_per_example * n_eval if n_eval else 0.0
    if not run.get("total_steps") and trains:  # still loading: the whole run is ahead
        return run_seconds(spec, timing, online)
    train_left = run.get("eta_s") or 0.0
    # a dev-selected run scores the validation split once more at the end
    final = timing.eval_s_per_example * (eval_size(spec, online) or 0) if trains and spec.selection == "dev" else 0.0
    return train_left + max(0, passes_left) * per_pass + final + (1.0 if trains else 0.0)


# a configuration training more than this share of the model's parameters is not parameter-efficient
PEFT_MAX_TRAINABLE_PCT = 10.0


def efficiency_warning(trainable: int, total: int, method: str, capacity: int | None = None) -> str | None:
    """A sentence when a configuration trains more than PEFT_MAX_TRAINABLE_PCT of the model, else None."""
    if not total:
        return None
    pct = 100.0 * trainable / total
    if pct <= PEFT_MAX_TRAINABLE_PCT:
        return None
    m = methods.get_method(method)
    if m.role == methods.ROLE_FULL:
        return (f"Full fine-tuning trains all {pct:.0f}% of the parameters: it is the reference the "
                "parameter-efficient methods are measured against, not one of them.")
    what = f"{m.title} with {m.capacity_name} {capacity}" if m.capacity_name and capacity else m.title
    return (f"{what} trains {pct:.0f}% of the model's parameters: that is no longer parameter-efficient "
            f"(more than {PEFT_MAX_TRAINABLE_PCT:.0f}%). A smaller {m.capacity_name or 'configuration'} "
            "keeps it efficient.")


# -- uploads --------------------------------------------------------------------------------------
def save_upload(st_store: Store, filename: str, data: bytes) -> Path:
    """Save an uploaded data file under results/uploads/ with a generated name (never the user's)."""

    ext = Path(filename or "").suffix.lower()
    if ext not in tasks.FORMATS:
        raise ValueError(f"upload: {Path(filename).name} is not JSONL, CSV or parquet "
                         f"(expected {', '.join(tasks.FORMATS)})")
    if len(data) > tasks.MAX_UPLOAD_BYTES:
        raise ValueError(f"upload: larger than {tasks.MAX_UPLOAD_BYTES // 2**20} MB")
    if not data:
        raise ValueError(f"upload: {Path(filename).name} is empty")
    out = st_store.home / UPLOAD_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:10]}{ext}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(ext + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    _remember_upload_name(st_store.home, out, filename)  # messages and specs show the user's name
    return out


# -- bundles (peftcompare.bundle) as bytes for download and upload ---------------------------------------
def bundle_bytes(st_store: Store, run_ids: list[str]) -> bytes:
    """The runs and their adapters as one bundle zip (the format `python -m peftcompare` imports)."""

    with tempfile.TemporaryDirectory(prefix="peftcompare-export-") as tmp:
        out = Path(tmp) / "bundle.zip"
        export_bundle(st_store, run_ids, out)
        return out.read_bytes()


def import_bundle_bytes(st_store: Store, data: bytes, overwrite: bool = False, filename: str = "") -> list[str]:
    """Check an uploaded bundle completely (bundle.import_bundle trusts nothing in it) and add its runs.
    The temporary copy carries the uploaded file's base name, so messages name the user's file."""

    if len(data) > LIMITS.max_bundle_bytes:
        raise ValueError(f"bundle: larger than {fmt_bytes(LIMITS.max_bundle_bytes)}")
    shown = "".join(c for c in Path(filename or "").name if c.isprintable() and c not in "/\\")[:120]
    if not shown.lower().endswith(".zip"):
        shown = "bundle.zip"
    with tempfile.TemporaryDirectory(prefix="peftcompare-import-") as tmp:
        path = Path(tmp) / shown
        path.write_bytes(data)
        return import_bundle(st_store, path, overwrite=overwrite)


def adapter_size(run: dict) -> int | None:
    path = run.get("adapter_dir")
    if path and Path(path).is_dir():
        return dir_bytes(Path(path))
    return run.get("adapter_bytes")


def can(action: str) -> bool:
    return {"train": public.can_train, "delete": public.can_delete, "import": public.can_import}[action]()


# -- words for people: spec fields as the widgets name them, messages without internals -----------------
FIELD_LABELS = {  # spec field -> the Train page's widget label (short form)
    "task": "Task", "method": "Method", "capacity": "Capacity", "model_name": "Model", "dataset": "Dataset",
    "train_file": "Train file", "validation_file": "Validation file", "text_column": "Input column",
    "target_column": "Target column", "prompt_template": "Prompt template", "train_samples": "Training examples",
    "eval_samples": "Evaluation examples", "num_train_epochs": "Epochs", "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Train batch size", "per_device_eval_batch_size": "Eval batch size",
    "seed": "Seed", "max_source_length": "Max input tokens", "max_target_length": "Max target tokens",
    "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout", "target_modules": "Target modules",
    "precision": "Precision", "weight_decay": "Weight decay", "warmup_ratio": "Warm-up ratio",
}
_PREFIX_LABELS = {  # other leading "word:" of library messages
    "spec": "Settings", "bundle": "Bundle", "upload": "Upload", "sweep": "Sweep", "preset": "Preset",
    "export": "Download", "run_id": "Run", "capacities": "Capacities", "seeds": "Seeds", "methods": "Methods",
    "batch size": "Batch size", "max_source_length/max_target_length": "Max input / target tokens",
    "public": "Public instance", "compare": "Compare", "text": "Text",
}
_TYPE_WORDS = {"int": "a whole number", "float": "a number", "str": "text"}
_GENERATED_UPLOAD = re.compile(r"(?:[^\s'\"()]*/)?\d{8}-\d{6}-[0-9a-f]{10}\.[A-Za-z0-9]+")


def user_message(exc_or_text, names: dict[str, str] | None = None) -> str:
    """One line for the screen from a library error: a leading `field_name:` becomes the field's label
    ("learning_rate: ..." -> "Learning rate: ..."), CLI flags and commands go, and internal file names
    (generated upload names, temporary paths) become the names the user gave (`names`: internal -> shown;
    uploads saved by save_upload are known without it)."""
    text = str(exc_or_text).strip()
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    for internal, shown in (names or {}).items():
        if internal:
            text = text.replace(str(internal), shown)
    text = _GENERATED_UPLOAD.sub(lambda m: _upload_names().get(Path(m.group(0)).name, "the uploaded file"), text)
    # CLI-isms: the pages offer these as buttons and checkboxes
    text = re.sub(r"\s*\((?:use )?--overwrite\b[^)]*\)", "", text)
    text = re.sub(r"[;,]?\s*(?:see|run|try) `?python -m peftcompare [\w-]+(?: --[\w-]+)*`?", "", text)
    text = re.sub(r"--([a-z][a-z0-9_]*)", lambda m: FIELD_LABELS.get(m.group(1), m.group(1).replace("_", " ")), text)
    text = re.sub(r"expected (int|float|str)\b", lambda m: f"expected {_TYPE_WORDS[m.group(1)]}", text)
    head, sep, rest = text.partition(": ")
    label = FIELD_LABELS.get(head) or _PREFIX_LABELS.get(head)
    if sep and label:
        text = f"{label}: {rest}"
    return text[:1].upper() + text[1:]


# uploads keep generated names on disk (never the user's); the name the user gave is kept beside them
def _upload_names_path() -> Path:
    return resolve_home() / "results" / "upload_names.json"


def _upload_names() -> dict[str, str]:
    import json

    try:
        data = json.loads(_upload_names_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_upload_name(home: Path, saved: Path, original: str) -> None:
    import fcntl
    import json

    path = home / "results" / "upload_names.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = "".join(c for c in Path(original or "").name if c.isprintable())[:120] or saved.name
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[saved.name] = shown
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)


def upload_display_name(path) -> str:
    """The file name to show for a stored file path: the user's name for an upload, else its base name."""
    if not path:
        return ""
    name = Path(str(path)).name
    return _upload_names().get(name, name)


def persist(key: str, default=None) -> None:
    """Keep a widget's value when the page is left: Streamlit deletes the state of widgets not drawn in
    a run, so the value is mirrored under a non-widget key and put back before the widget is drawn.
    Call it before the widget with the same key (and give the widget no value= of its own)."""
    kept = f"_kept_{key}"
    if key in st.session_state:
        st.session_state[kept] = st.session_state[key]
    else:
        st.session_state[key] = st.session_state.get(kept, default)


def model_family_guess(model_name: str) -> str | None:
    """'t5', 'seq2seq', 'causal', 'encoder' or None, from the name alone (no download, no torch)."""
    name = Path(str(model_name or "")).name.lower()
    if "t5" in name:
        return "t5"
    if any(k in name for k in ("bart", "pegasus", "marian")):
        return "seq2seq"
    if any(k in name for k in ("bert", "electra", "deberta")):
        return "encoder"
    if any(k in name for k in ("gpt", "llama", "opt-", "pythia", "qwen", "mistral", "phi")):
        return "causal"
    return None


def method_note(method: str, model_name: str | None = None) -> str:
    """The method's note where it applies to the model's family (a T5 remark is not for BERT); an
    unrecognised model gets the note."""
    m = methods.METHODS.get(method)
    if m is None or not m.note:
        return ""
    family = model_family_guess(model_name) if model_name else None
    if family is None or not m.note_families or family in m.note_families:
        return m.note
    return ""


_TRAINING_FIELDS = ("train_file", "train_samples", "num_train_epochs", "learning_rate",
                    "per_device_train_batch_size", "weight_decay", "warmup_ratio", "seed")
_METHOD_FIELDS = ("lora_alpha", "lora_dropout", "target_modules")  # shown only for methods that read them


def applicable_fields(spec: RunSpec) -> list[str]:
    """The spec fields that mean something for this run's method: no LoRA settings on a prompt-tuning
    run, no capacity without a knob, no training settings (learning rate, epochs, ...) for zero-shot."""
    m = methods.get_method(spec.method)
    out = []
    for name in FIELD_LABELS:
        if name == "capacity" and m.capacity_name is None:
            continue
        if name in _TRAINING_FIELDS and not m.trains:
            continue
        if name in _METHOD_FIELDS and name not in m.fields:
            continue
        if name in ("train_file", "validation_file") and not getattr(spec, name):
            continue
        out.append(name)
    return out


def spec_rows(spec: RunSpec) -> list[dict]:
    """(setting, value) rows of the fields that apply to the run, labelled as the Train page labels them."""
    m = methods.get_method(spec.method)
    rows = []
    for name in applicable_fields(spec):
        value = getattr(spec, name)
        if name == "method":
            value = m.title
        elif name == "capacity":
            value = f"{value} ({m.capacity_name})"
        elif name in ("train_file", "validation_file"):
            value = upload_display_name(value)
        elif name in ("train_samples", "eval_samples") and value == 0:
            value = "all"
        elif name == "learning_rate":
            value = f"{value:g}"
        rows.append({"setting": FIELD_LABELS[name], "value": str(value) if value != "" else "—"})
    return rows
