"""Public mode for hosted Spaces (PEFTCOMPARE_PUBLIC=1): what a visitor may and may not do.

PEFTCOMPARE_PUBLIC=1           training limited to the allow-list and caps below, delete and import off
PEFTCOMPARE_PUBLIC=no-train    as above, and training off entirely
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec


@dataclass(frozen=True)
class Limits:
    models: tuple[str, ...] = ("builtin:tiny-t5", "google/flan-t5-small")
    max_train_samples: int = 500
    max_eval_samples: int = 200
    max_epochs: int = 3
    max_capacity: int = 64
    max_batch_size: int = 32
    max_source_length: int = 512
    jobs_per_visitor: int = 1
    max_queue: int = 20  # all visitors together: a queue nobody can finish is a denial of service
    # methods that hold every weight and its optimizer state (Method.heavy) are too heavy for a shared Space
    allow_heavy_methods: bool = False


LIMITS = Limits()


def mode() -> str:
    value = os.environ.get("PEFTCOMPARE_PUBLIC", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return "private"
    return "no-train" if value in ("no-train", "notrain", "readonly", "read-only") else "public"


def is_public() -> bool:
    return mode() != "private"


def can_train() -> bool:
    return mode() != "no-train"


def can_delete() -> bool:
    return not is_public()


def can_import() -> bool:
    return not is_public()


def check_spec(spec: RunSpec) -> None:
    """Raise ValueError (one line) when public mode forbids this spec; no-op in private mode."""
    if not is_public():
        return
    if not can_train():
        raise ValueError("training is turned off on this public instance")
    if spec.model_name not in LIMITS.models:
        raise ValueError(f"model_name: this public instance only trains {', '.join(LIMITS.models)}")
    if spec.train_file or spec.validation_file:
        raise ValueError("train_file: uploaded data files are turned off on this public instance")
    if spec.dataset and "/" in spec.dataset:
        raise ValueError("dataset: only the built-in dataset presets are available on this public instance")
    if spec.train_samples == 0 or spec.train_samples > LIMITS.max_train_samples:
        raise ValueError(f"train_samples: at most {LIMITS.max_train_samples} on this public instance")
    if spec.eval_samples == 0 or spec.eval_samples > LIMITS.max_eval_samples:
        raise ValueError(f"eval_samples: at most {LIMITS.max_eval_samples} on this public instance")
    if spec.num_train_epochs > LIMITS.max_epochs:
        raise ValueError(f"num_train_epochs: at most {LIMITS.max_epochs} on this public instance")
    if spec.capacity > LIMITS.max_capacity:
        raise ValueError(f"capacity: at most {LIMITS.max_capacity} on this public instance")
    if methods.get_method(spec.method).heavy and not LIMITS.allow_heavy_methods:
        raise ValueError(f"method: {spec.method} is turned off on this public instance")
    if max(spec.per_device_train_batch_size, spec.per_device_eval_batch_size) > LIMITS.max_batch_size:
        raise ValueError(f"per_device_train_batch_size: at most {LIMITS.max_batch_size} on this public instance")
    if spec.max_source_length > LIMITS.max_source_length or spec.max_target_length > LIMITS.max_source_length:
        raise ValueError(f"max_source_length: at most {LIMITS.max_source_length} on this public instance")


def check_delete() -> None:
    if not can_delete():
        raise ValueError("delete: deleting runs is turned off on this public instance")


def check_import() -> None:
    if not can_import():
        raise ValueError("import: importing bundles is turned off on this public instance")


def check_visitor_quota(store, owner: str | None) -> None:
    """One queued or running job per visitor, and a bounded queue, in public mode."""
    if not is_public():
        return
    if len(store.list_runs(status=("queued", "running"))) >= LIMITS.max_queue:
        raise ValueError(f"the queue is full ({LIMITS.max_queue} runs); try again later (public instance limit)")
    if not owner:
        raise ValueError("a visitor id is needed to queue a run on this public instance")
    active = store.list_runs(status=("queued", "running"), owner=owner)
    if len(active) >= LIMITS.jobs_per_visitor:
        raise ValueError("you already have a run in the queue; wait for it to finish (public instance limit)")
