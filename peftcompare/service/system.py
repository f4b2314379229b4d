"""The machine and the Hub as the CLI and the app see them: reachability of the Hub (or its mirror), the device
and precision runs will use, library versions, and warming the training stack.

Torch-free: these answer at the app's first paint. A question only torch can answer is asked of torch when
it is already loaded, else of cheap probes (CPU flags, the installed wheel).
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import threading


def hub_endpoint() -> str:
    """The Hub endpoint downloads go to: $HF_ENDPOINT (a mirror) or huggingface_hub's default."""
    from peftcompare.engine import runtime

    return runtime.hub_endpoint()


def hub_offline_forced() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(endpoint: str | None = None, timeout: float = 1.5) -> bool:
    """Can the Hub (or the mirror) be reached now? False at once when HF_HUB_OFFLINE is set."""
    if hub_offline_forced():
        return False
    from peftcompare.engine import runtime

    return runtime.hub_reachable(timeout=timeout, endpoint=endpoint)


def versions() -> dict:
    """Python, platform, library versions and the clone's commit: what every run record keeps."""
    from peftcompare.engine import runtime

    return runtime.versions()


def device_summary() -> dict:
    """Device and precision runs will use, without importing torch unless it is loaded already."""
    from peftcompare.engine import runtime

    if "torch" in sys.modules:
        device = runtime.device_name()
        try:
            precision = runtime.resolve_precision("auto", device)[0]
        except ValueError:
            precision = "fp32"
    else:
        gpu = _gpu_possible()
        device = "cuda" if gpu else "cpu"
        precision = "bf16 or fp32 (auto)" if gpu else (
            "bf16" if {"avx512_bf16", "amx_bf16"} & runtime.cpu_flags() else "fp32")
    label = "GPU (CUDA)" if device.startswith("cuda") else f"CPU · {runtime.usable_cores()} cores"
    return {"device": device, "label": label, "precision": precision, "cpu": runtime.cpu_model()}


def _gpu_possible() -> bool:
    """The cheap probe: an NVIDIA driver, and a torch wheel that is not a CPU build."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return os.path.exists("/dev/nvidiactl") and "+cpu" not in torch_version


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as a child process's CUDA_VISIBLE_DEVICES names them. torch is asked
    only where the cheap probe allows a GPU: a CPU machine's worker never loads it."""
    if "torch" not in sys.modules and not _gpu_possible():
        return []
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
        return []
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:n] if len(named) >= n else [str(i) for i in range(n)]


_IMPORT_LOCK = threading.Lock()


def import_stack() -> None:
    """Import torch, transformers and peft once, under one lock. transformers' lazy module is not safe to
    initialise from two threads at once (a warm-up thread and a page), so every path that needs the stack
    from a threaded server calls this first."""
    with _IMPORT_LOCK:
        from peftcompare.engine import compare, train  # noqa: F401  (torch, transformers, peft)
