"""Helpers shared by the Streamlit pages: cached store and engine, machine facts, formatting, ETA,
uploads and bundle zips as bytes.

Nothing here imports torch at module level: the app must start in a couple of seconds, so heavy
modules are imported inside the functions that need them.
"""
from __future__ import annotations

import importlib.metadata
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import streamlit as st

from . import methods, public, runtime, tasks
from .spec import RunSpec
from .store import Store, dir_bytes, resolve_home

OFFLINE_MODEL = "builtin:tiny-t5"
# samples/s assumed before a model has any completed run: deliberately slow so an ETA is not a promise
DEFAULT_SPS = {"builtin:tiny-t5": 20.0}
DEFAULT_SPS_CPU, DEFAULT_SPS_GPU = 3.0, 40.0
DEFAULT_OVERHEAD_S = 15.0  # process start, model load and evaluation of one run
UPLOAD_DIR = Path("results") / "uploads"
REPO = Path(__file__).resolve().parents[1]
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
    from .infer import CompareEngine

    return CompareEngine(Store(home)), threading.Lock()


def reconcile_once() -> list[str]:
    """Mark runs whose process is gone as interrupted, once per browser session."""
    if st.session_state.get("_reconciled_home") == str(resolve_home()):
        return []
    from . import jobs

    fixed = jobs.reconcile(store())
    st.session_state["_reconciled_home"] = str(resolve_home())
    return fixed


def visitor_id() -> str:
    if "visitor_id" not in st.session_state:
        st.session_state["visitor_id"] = "visitor-" + uuid.uuid4().hex[:12]
    return st.session_state["visitor_id"]


def hub_online() -> bool:
    # HF_HUB_OFFLINE answers at once; a real probe is cached for a few minutes
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return _probe_hub(runtime.hub_endpoint())


@st.cache_data(ttl=300, show_spinner=False)
def _probe_hub(endpoint: str) -> bool:
    # keyed by the endpoint: a changed HF_ENDPOINT is probed afresh, not answered from the old cache
    return runtime.hub_reachable(endpoint=endpoint)


def default_model(online: bool) -> str:
    return RunSpec().model_name if online else OFFLINE_MODEL


# -- machine facts without importing torch ------------------------------------------------------------
def device_summary() -> dict:
    """Device and precision the app will use. Uses torch if it is already loaded, else cheap probes."""
    if "torch" in sys.modules:
        device = runtime.device_name()
        try:
            precision = runtime.resolve_precision("auto", device)[0]
        except ValueError:
            precision = "fp32"
    else:
        try:
            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torch_version = "missing"
        gpu = os.path.exists("/dev/nvidiactl") and "+cpu" not in torch_version
        device = "cuda" if gpu else "cpu"
        precision = "bf16 or fp32 (auto)" if gpu else (
            "bf16" if {"avx512_bf16", "amx_bf16"} & runtime.cpu_flags() else "fp32")
    label = "GPU (CUDA)" if device.startswith("cuda") else f"CPU · {runtime.usable_cores()} cores"
    return {"device": device, "label": label, "precision": precision, "cpu": runtime.cpu_model()}


_IMPORT_LOCK = threading.Lock()


def import_stack() -> None:
    """Import torch, transformers and peft once, under one lock. transformers' lazy module is not safe
    to initialise from two threads at once (the warm-up thread and a page), so every page path that
    needs the stack calls this first."""
    with _IMPORT_LOCK:
        from . import infer, train  # noqa: F401  (torch, transformers, peft)


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
    m = methods.get_method(spec.method)
    cap = f" {spec.capacity}" if m.capacity_name else ""
    return f"{m.title}{cap} · seed {spec.seed} · {spec.task} · {run['run_id'][-6:]}"


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
    from . import models
    from .train import prepare_model

    spec = RunSpec.from_json(spec_json).resolved()
    models.check_model_name(spec.model_name)
    # prompt tuning initialises from the instruction's token embeddings, which need real weights
    loaded = models.load_model(spec.model_name, meta=spec.method != "prompt")
    return models.count_parameters(prepare_model(spec, loaded, total_steps=100))


# -- sweeps and durations ---------------------------------------------------------------------------
def grid_specs(base: RunSpec, method_names: list[str], capacities: list[int], seeds: list[int],
               zero_shot: bool) -> list[RunSpec]:
    """methods x capacities x seeds (methods without a capacity knob once per seed), like `sweep`."""
    from .cli import sweep_specs

    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if not method_names and not zero_shot:
        raise ValueError("methods: choose at least one method")
    with_knob = [m for m in method_names if methods.get_method(m).capacity_name]
    if with_knob and not capacities:
        raise ValueError("capacities: give at least one capacity for " + ", ".join(with_knob))
    caps = {m: capacities for m in with_knob}
    specs = sweep_specs(base, method_names, capacities, capacities, seeds, capacities=caps,
                        zero_shot=zero_shot)
    return list({s.spec_hash(): s for s in specs}.values())


def parse_int_list(text: str, what: str) -> list[int]:
    out = []
    for part in str(text).replace(";", ",").replace(" ", ",").split(","):
        if not part.strip():
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"{what}: expected whole numbers separated by commas, got {part.strip()!r}") from None
    return list(dict.fromkeys(out))


def train_size(spec: RunSpec, online: bool) -> int | None:
    """How many training examples the run will see, when it can be known without loading the data."""
    n = spec.train_samples or None
    if spec.train_file or online:
        return n
    ds = tasks.get_dataset(spec.dataset or tasks.get_task(spec.task).default_dataset)
    if not ds.sample_prefix:
        return n
    sample = tasks.SAMPLES_DIR / f"{ds.sample_prefix}_{ds.train_split}.jsonl"
    try:
        lines = sum(1 for line in sample.read_text().splitlines() if line.strip())
    except OSError:
        return n
    return min(n, lines) if n else lines


def throughput(runs: list[dict], model_name: str) -> tuple[float | None, float | None]:
    """(median train samples/s, median seconds outside the training loop) of this model's past runs."""
    done = [r for r in runs if r.get("status") == "completed" and r.get("model_name") == model_name]
    sps = [r["train_samples_per_second"] for r in done if r.get("train_samples_per_second")]
    over = [r["finished_at"] - r["started_at"] - (r.get("train_runtime") or 0) for r in done
            if r.get("finished_at") and r.get("started_at")]
    return (statistics.median(sps) if sps else None), (statistics.median(over) if over else None)


def estimate_seconds(specs: list[RunSpec], runs: list[dict], online: bool, device: str = "cpu"
                     ) -> tuple[float | None, bool]:
    """(total seconds or None when unknown, measured?) for running `specs` one after another."""
    total, measured = 0.0, True
    for spec in specs:
        sps, overhead = throughput(runs, spec.model_name)
        if sps is None:
            measured = False
            sps = DEFAULT_SPS.get(spec.model_name, DEFAULT_SPS_GPU if device.startswith("cuda") else DEFAULT_SPS_CPU)
        n = train_size(spec, online)
        if n is None and methods.get_method(spec.method).trains:
            return None, measured
        trains = methods.get_method(spec.method).trains
        total += (n * spec.num_train_epochs / sps if trains else 0.0) + (overhead or DEFAULT_OVERHEAD_S)
    return total, measured


# -- uploads --------------------------------------------------------------------------------------
def save_upload(st_store: Store, filename: str, data: bytes) -> Path:
    """Save an uploaded data file under results/uploads/ with a generated name (never the user's)."""
    from .data import FORMATS, MAX_UPLOAD_BYTES

    ext = Path(filename or "").suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"upload: {Path(filename).name} is not JSONL, CSV or parquet "
                         f"(expected {', '.join(FORMATS)})")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"upload: larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    if not data:
        raise ValueError(f"upload: {Path(filename).name} is empty")
    out = st_store.home / UPLOAD_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:10]}{ext}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(ext + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


# -- bundles (peftcompare.bundle) as bytes for download and upload ---------------------------------------
def bundle_bytes(st_store: Store, run_ids: list[str]) -> bytes:
    """The runs and their adapters as one bundle zip (the format `python -m peftcompare` imports)."""
    from .bundle import export_bundle

    with tempfile.TemporaryDirectory(prefix="peftcompare-export-") as tmp:
        out = Path(tmp) / "bundle.zip"
        export_bundle(st_store, run_ids, out)
        return out.read_bytes()


def import_bundle_bytes(st_store: Store, data: bytes, overwrite: bool = False) -> list[str]:
    """Check an uploaded bundle completely (bundle.import_bundle trusts nothing in it) and add its runs."""
    from .bundle import LIMITS, import_bundle

    if len(data) > LIMITS.max_bundle_bytes:
        raise ValueError(f"bundle: larger than {fmt_bytes(LIMITS.max_bundle_bytes)}")
    with tempfile.TemporaryDirectory(prefix="peftcompare-import-") as tmp:
        path = Path(tmp) / "upload.zip"
        path.write_bytes(data)
        return import_bundle(st_store, path, overwrite=overwrite)


def adapter_size(run: dict) -> int | None:
    path = run.get("adapter_dir")
    if path and Path(path).is_dir():
        return dir_bytes(Path(path))
    return run.get("adapter_bytes")


def can(action: str) -> bool:
    return {"train": public.can_train, "delete": public.can_delete, "import": public.can_import}[action]()
