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
    """Import torch, transformers and peft once, under one lock. transformers' lazy module is not safe to
    initialise from two threads at once (a warm-up thread and a page), so every path that needs the stack
    from a threaded server calls this first."""
    with _IMPORT_LOCK:
        from peftcompare.engine import compare, train  # noqa: F401  (torch, transformers, peft)
