"""Machine facts and fast-path switches: device, precision, threads, denormals, memory, versions."""
from __future__ import annotations

import os
import platform
import resource
import socket
import sys
import threading
from functools import lru_cache
from urllib.parse import urlsplit


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_supported(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    # native bf16 dot products (AVX512-BF16 or AMX); emulated bf16 on older CPUs is slower than fp32
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: str):
    """(name, autocast dtype or None). 'auto' picks bf16 where the hardware has it, else fp32."""
    import torch

    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision: fp16 needs a GPU; use bf16 or fp32 on a CPU")
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("precision: this GPU has no bf16; use fp16 or fp32")
    return precision, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_cpu(world_size: int = 1) -> dict:
    """Threads split across data-parallel processes; denormals flushed (they slow fp32 backward passes 4x)."""
    import torch

    threads = max(1, usable_cores() // max(1, world_size))
    torch.set_num_threads(threads)
    flushed = bool(torch.set_flush_denormal(True))
    return {"threads": threads, "flush_denormal": flushed, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def versions() -> dict:
    import importlib.metadata as md

    from peftcompare import __version__

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model()}
    for pkg in ("peftcompare", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers",
                "huggingface_hub", "safetensors", "sentencepiece", "rouge_score", "scikit-learn", "streamlit"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    # run from a clone, not installed: the package's own version, and the commit the numbers came from
    out["peftcompare"] = out["peftcompare"] or __version__
    commit = git_commit()
    if commit:
        out["peftcompare_commit"] = commit
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["cuda"] = torch.version.cuda
    except Exception:  # a broken CUDA install must not stop a CPU run
        pass
    return out


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub talks to: HF_ENDPOINT as set now (huggingface_hub reads it once, at
    import, so a variable set later would be missed by its constant), else the library's own default."""
    from huggingface_hub.constants import ENDPOINT

    return (os.environ.get("HF_ENDPOINT") or ENDPOINT).rstrip("/")


def _endpoint_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"HF_ENDPOINT: {url!r} is not an http(s) URL")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def hub_reachable(timeout: float = 1.5, endpoint: str | None = None) -> bool:
    """Whether the Hub endpoint (hub_endpoint() unless given) accepts a TCP connection within `timeout`
    seconds; False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        address = _endpoint_address(endpoint or hub_endpoint())
    except ValueError:
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # the name lookup inside create_connection ignores socket timeouts: a daemon thread bounds it too
    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result and result[0])


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The clone's HEAD commit, read from .git without running git (None outside a clone)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    git = os.path.join(root, ".git")

    def read(*parts: str) -> str:
        with open(os.path.join(git, *parts)) as f:
            return f.read().strip()

    try:
        head = read("HEAD")
        if head.startswith("ref: "):
            ref = head[5:]
            if os.path.exists(os.path.join(git, ref)):
                return read(ref)
            with open(os.path.join(git, "packed-refs")) as f:
                for line in f:
                    if line.rstrip().endswith(" " + ref):
                        return line.split()[0]
            return None
        return head
    except OSError:
        return None
