"""Helpers shared by the bench scripts: machine peak, memory sampling, data files, timing.

Benchmarks print figures; they never assert. Run them from the repository root (python bench/x.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import peftcompare  # noqa: E402,F401  - its OpenMP spin default must be in place before torch loads

SAMPLES = ROOT / "peftcompare" / "samples"
SMALL = "builtin:random-flan-t5-small"


def device_arg(parser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu). "
                        "Figures on a GPU are absolute times; the CPU targets are ratios on a 2-core machine.")


def pick_device(name: str | None) -> str:
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no GPU is visible")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def tmp_home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"peftcompare-{prefix}-"))
    os.environ["PEFTCOMPARE_HOME"] = str(home)
    return home


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def repeated(rows: list[dict], n: int) -> list[dict]:
    """n rows, cycling through the sample (a fixed order, so every side sees the same data)."""
    return [dict(rows[i % len(rows)]) for i in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms).

    ru_maxrss only ever grows, so two phases in one process need a sampler to get a peak each."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self.start = interval, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class GpuBusy:
    """The GPU's utilisation while the block runs: nvidia-smi's utilization.gpu (the share of time a kernel ran)
    sampled every 100 ms, its `mean` in %; None off a GPU or without nvidia-smi. What tells whether
    packing (or `worker --per_gpu`) has the device busy."""

    def __init__(self, device: str, interval: float = 0.1):
        self.device, self.interval, self.samples = device, interval, []
        self._stop, self._thread = threading.Event(), None

    def _index(self) -> str:
        import torch

        from peftcompare.service import system

        i = torch.cuda.current_device() if ":" not in self.device else int(self.device.split(":")[1])
        gpus = system.visible_gpus()  # nvidia-smi names GPUs as the machine does, not as this process sees them
        return gpus[i] if i < len(gpus) else str(i)

    def __enter__(self):
        if self.device.startswith("cuda") and shutil.which("nvidia-smi"):
            self._cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                         "-i", self._index()]
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            out = subprocess.run(self._cmd, capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.samples.append(int(out))

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class Quiet:
    """A run reporter (engine.reporting's protocol) that keeps nothing and says nothing: benchmarks drive the
    training loop's own pieces without a store or log lines."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def __getattr__(self, name):
        return lambda *a, **k: None

    def cancel_requested(self) -> bool:
        return False


def start_pack(specs: list, loaded, feats: list | None = None, tag: str = "pack"):
    """The runs `specs` set up as one pack over `loaded` (engine/packing.py, as run_pack sets it up) and at the
    start of an epoch; `feats` replaces every run's training examples. Returns (pack, members): step it with
    pack._step(members, i, last=False)."""
    from peftcompare.core import methods
    from peftcompare.engine import packing, train

    members = []
    for k, spec in enumerate(specs):
        m = packing._Member(train.open_session(spec, Quiet(f"{tag}-{k}"), loaded=loaded), f"run{k}")
        if feats is not None:
            m.s.train_feats = feats
        train.plan_steps(m.s)
        members.append(m)
    pack = packing._Pack(methods.get_method(specs[0].method).pack, loaded, members)
    pack.apply_methods()
    for m in members:
        train.ready(m.s)
        m.model.train()
        m.batches = m.progress.epoch_batches()
        m.progress.begin_epoch()
    return pack, members


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextmanager
def timed(out: dict, key: str, device: str = "cpu"):
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    out[key] = time.perf_counter() - t0


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# -- the machine's peak -------------------------------------------------------------------------------
def cpu_peak() -> dict:
    """Theoretical peak GFLOP/s from /proc/cpuinfo: cores x clock x FLOPs per cycle per core.

    FLOPs/cycle: two 512-bit FMA units -> fp32 2 x 16 lanes x 2 = 64; AVX512-BF16 (vdpbf16ps: 32 bf16
    pairs per unit) -> 128; AMX-BF16 tile multiply: 1024 (16x16x32 multiply-adds per 16 cycles).
    Without AVX-512: two 256-bit FMA units -> 32 fp32."""
    from peftcompare.engine import runtime

    flags = runtime.cpu_flags()
    cores = runtime.usable_cores()
    ghz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    ghz = float(line.split(":")[1]) / 1000
                    break
    except OSError:
        pass
    ghz = ghz or 2.0
    fp32 = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    bf16_vec = 128 if "avx512_bf16" in flags else fp32
    amx = 1024 if "amx_bf16" in flags else 0
    out = {"cores": cores, "ghz": ghz, "fp32": cores * ghz * fp32, "bf16_avx512": cores * ghz * bf16_vec,
           "bf16_amx": cores * ghz * amx if amx else None,
           "how": f"{cores} cores x {ghz:.2f} GHz x FLOPs/cycle (fp32 {fp32}, bf16 AVX512-BF16 {bf16_vec}"
                  f"{f', AMX {amx}' if amx else ''})"}
    return out


def gpu_peak() -> dict:
    import torch

    name = torch.cuda.get_device_name(0)
    # dense tensor-core peaks from the vendor's data sheets (no sparsity)
    table = {"H100": (67_000, 989_000), "H200": (67_000, 989_000), "A100": (19_500, 312_000),
             "L4": (30_300, 121_000), "A10": (31_200, 125_000), "T4": (8_100, 65_000)}
    for key, (fp32, bf16) in table.items():
        if key in name:
            return {"fp32": fp32, "bf16_avx512": bf16, "bf16_amx": None, "how": f"{name} data sheet (dense)"}
    return {"fp32": None, "bf16_avx512": None, "bf16_amx": None, "how": f"{name}: peak unknown"}


def peak_for(precision: str, device: str) -> tuple[float | None, str]:
    """(GFLOP/s peak, description) for a precision; bf16 on CPU is compared with the AVX512-BF16 peak
    (the AMX peak, 8x higher, is printed beside it: small matrices cannot feed the tiles)."""
    p = gpu_peak() if device.startswith("cuda") else cpu_peak()
    key = "fp32" if precision == "fp32" else "bf16_avx512"
    return p[key], p["how"]


def flops_of(fn) -> int:
    """Floating-point operations of fn() counted by torch's FlopCounterMode (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def fmt_table(rows: list[list], header: list[str]) -> str:
    cols = list(zip(*([header] + [[str(c) for c in r] for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def emit_json(result: dict, path: str | None) -> None:
    """Machine-readable figures for run_all.py."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1, default=str))
