"""A run against the store: `StoreReporter` (engine.reporting's Reporter protocol on a Store) and `execute`,
which drives a claimed run to a final status whatever happens.

Torch-free at import: the engine is imported only inside the functions that train.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store


class StoreReporter:
    """Writes one run's row of the store as it trains, and reads its cancel flag.

    Log lines go to stdout (the worker captures a child's stdout as the run's log), through the terminal's
    progress bar when there is one; `progress(step, total, loss)` is called every step.
    """

    def __init__(self, store: Store, run_id: str, progress=None, alone: str = "", prefix: str = "",
                 ticks: bool = True):
        self.store, self.run_id, self.progress, self.alone = store, run_id, progress, alone
        # in a pack, several runs log to one terminal (and one log file): each line names its run, and only one
        # run moves the shared bar (the pack's runs step together)
        self.prefix, self.ticks = prefix, ticks

    def log(self, msg: str) -> None:
        msg = self.prefix + msg
        write = getattr(self.progress, "write", None)  # a bar redraws beneath the line instead of tearing
        if write is not None:
            write(msg)
        else:
            print(msg, flush=True)

    def cache_dir(self) -> Path:
        return self.store.cache_dir

    def started(self, facts: dict[str, Any]) -> None:
        if self.alone:  # the run's own fast_paths (the record's too: the same dict) say why it was not packed
            facts["fast_paths"]["packed"] = {"alone": self.alone}
        self.store.update(self.run_id, trainable_params=facts["trainable_params"],
                          total_params=facts["total_params"], precision=facts["precision"], device=facts["device"],
                          data_fingerprint=facts["data_fingerprint"], data_source=facts["data_source"],
                          versions_json=facts["versions"], total_steps=facts["total_steps"],
                          fast_paths_json=facts["fast_paths"], world_size=facts["world_size"],
                          spec_json=facts["spec"].to_json())

    def tick(self, step: int, total: int, loss: float) -> None:
        if self.progress and self.ticks:
            self.progress(step, total, loss)

    def steps(self, rows: list, step: int, total: int, loss: float, eta: float | None) -> None:
        self.store.add_steps(self.run_id, rows)
        self.store.update(self.run_id, step=step, progress=step / max(1, total), current_loss=loss, eta_s=eta,
                          heartbeat=time.time())

    def epoch(self, epochs: list[dict]) -> None:
        self.store.update(self.run_id, epochs_json=epochs, heartbeat=time.time())

    def cancel_requested(self) -> bool:
        return self.store.cancel_requested(self.run_id)

    def staging_dir(self) -> Path:
        return self.store.staging_path(self.run_id)

    def commit(self, staging: Path) -> Path:
        return self.store.commit_adapter(self.run_id, staging)

    def completed(self, record: dict, adapter_dir: Path | None, adapter_bytes: int | None) -> None:
        # the answers first: a completed run always has its per-example answers (paired tests read them)
        for split, per_example in (record.get("per_example") or {}).items():
            if per_example:
                self.store.put_examples(self.run_id, split, per_example)
        budget = record.get("budget") or {}
        # the fast paths again: some are known only by the end (a pack's evaluation that had to go alone)
        self.store.update(self.run_id, best_epoch=record.get("best_epoch"), selection_json=record.get("selection"),
                          **({"fast_paths_json": record["fast_paths"]} if record.get("fast_paths") else {}),
                          budget_json=budget or None, train_flops=budget.get("train_flops"),
                          model_fingerprint=record.get("model_fingerprint"),
                          **({"total_steps": record["total_steps"]} if record.get("total_steps") else {}))
        self.store.transition(self.run_id, "completed", ("running",), metrics_json=record["metrics"],
                              epochs_json=record["epochs"], train_runtime=record["train_runtime"],
                              eval_runtime=record["eval_runtime"],
                              train_samples_per_second=record["train_samples_per_second"],
                              peak_memory_mb=record["peak_memory_mb"], adapter_bytes=adapter_bytes,
                              stored_params=record.get("stored_params"),
                              adapter_dir=str(adapter_dir) if adapter_dir else None, finished_at=time.time(),
                              progress=1.0, eta_s=0.0, heartbeat=time.time())


def run_training(spec: RunSpec, store: Store, run_id: str, progress=None) -> dict:
    """Train one run recorded in `store` (status running); returns its record. Raises on failure."""
    from peftcompare.engine import train

    return train.run(spec, StoreReporter(store, run_id, progress))


def execute(spec: RunSpec, store: Store, run_id: str, progress=None, alone: str = "") -> int:
    """Run a claimed run to a final status. Returns a process exit code (0 ok, 1 failed, 3 cancelled,
    130 interrupted). `alone`: why a run queued to train packed trains by itself (its fast_paths say so)."""
    from peftcompare.engine import train

    reporter = StoreReporter(store, run_id, progress, alone=alone)
    try:
        train.run(spec, reporter)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the record
        return _settle(store, run_id, reporter, exc)
    finally:
        _discard_staging(store, run_id)


def execute_pack(specs: list[RunSpec], store: Store, run_ids: list[str], progress=None) -> list[int]:
    """Run claimed runs packed in one pass over their shared base model (engine/packing.py); one exit code per
    run, as `execute` gives. A run that cancels or fails inside the pack leaves the others training."""
    from peftcompare.engine import packing

    alone = packing.family_alone(specs[0].model_name)
    if alone:  # a base model packs cannot train right: each run by itself, its record says why
        return [execute(spec, store, run_id, progress=progress, alone=alone) for spec, run_id in zip(specs, run_ids)]
    reporters = [StoreReporter(store, run_id, progress, prefix=f"[{spec.label()}] ", ticks=i == 0)
                 for i, (spec, run_id) in enumerate(zip(specs, run_ids))]
    try:
        outcomes = packing.run_pack(specs, reporters)
    except BaseException as exc:  # noqa: BLE001 - the pack itself failed: every run gets the reason
        outcomes = [exc] * len(run_ids)
    codes = []
    for run_id, reporter, outcome in zip(run_ids, reporters, outcomes):
        codes.append(0 if isinstance(outcome, dict) else _settle(store, run_id, reporter, outcome))
        _discard_staging(store, run_id)
    if any(isinstance(o, KeyboardInterrupt) for o in outcomes):
        raise KeyboardInterrupt
    return codes


def _settle(store: Store, run_id: str, reporter: StoreReporter, exc: BaseException) -> int:
    """The final status of a run that ended with `exc`; returns its exit code."""
    from peftcompare.engine import train

    if isinstance(exc, train.Cancelled):
        store.transition(run_id, "cancelled", ("running",), finished_at=time.time(), error="cancelled by the user")
        reporter.log("cancelled")
        return 3
    if isinstance(exc, KeyboardInterrupt):
        store.transition(run_id, "cancelled", ("running",), finished_at=time.time(), error="interrupted (Ctrl-C)")
        return 130
    reason = train.failure_reason(exc)
    traceback.print_exception(exc, file=sys.stdout)
    try:
        store.transition(run_id, "failed", ("running", "queued"), finished_at=time.time(), error=reason)
    finally:
        reporter.log(f"failed: {reason}")
    return 1


def _discard_staging(store: Store, run_id: str) -> None:
    try:
        store.discard_staging(run_id, os.getpid())
    except OSError:
        pass
