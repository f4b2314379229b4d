"""What a training run tells the outside world, and what it asks of it: the `Reporter` protocol.

`engine.train` never opens a store. Whoever starts a run hands it one reporter, and every fact the run
publishes (its setup, step rows, epochs, log lines, the final record) and every question it asks (stop
now? where may I cache tokenized data? where does the adapter go?) passes through it. So the engine
runs the same under the queue (service.execution.StoreReporter writes the run's row in the SQLite
store), in a notebook (`LogReporter` below, which keeps everything in memory), or packed with other
runs in one process: no call takes a run id, so each run simply holds its own reporter.

Facts are given in the words of the run record (`trainable_params`, `fast_paths`, `metrics`...), not
as store columns: mapping them onto a schema is the reporter's business.
"""
from __future__ import annotations

import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# (step, epoch as a fraction, loss, learning rate), as the store's steps table holds them
StepRow = tuple[int, float, float, float]


@runtime_checkable
class Reporter(Protocol):
    """One run's link to the outside world.

    Only the main process of a data-parallel run publishes (started, steps, epoch, log, staging_dir,
    commit, completed); every process calls `tick`, `cache_dir` and `cancel_requested`, so that all of
    them stop at the same flush.
    """

    run_id: str  # names the run in its record and log lines

    def log(self, msg: str) -> None:
        """One human-readable line (setup summary, per-epoch metrics, done)."""

    def cache_dir(self) -> Path | None:
        """A directory runs may share for caches (tokenized features); None: cache nothing."""

    def started(self, facts: dict[str, Any]) -> None:
        """Once, before the first step: parameter counts, precision, device, data fingerprint and source,
        versions, total_steps, fast_paths, world_size, and the resolved `spec` (a RunSpec)."""

    def tick(self, step: int, total: int, loss: float) -> None:
        """Every optimizer step; `loss` is the last one synced at a flush (a progress bar, nothing slow)."""

    def steps(self, rows: list[StepRow], step: int, total: int, loss: float, eta: float | None) -> None:
        """At each flush: the step rows since the last one, and where the run stands."""

    def epoch(self, epochs: list[dict]) -> None:
        """After each epoch's evaluation: every epoch entry so far (any extra keys, e.g. a dev split's)."""

    def cancel_requested(self) -> bool:
        """Asked at each flush: True stops the run (engine.train raises Cancelled)."""

    def staging_dir(self) -> Path | None:
        """An empty directory the adapter is written into; None: the adapter is not kept."""

    def commit(self, staging: Path) -> Path:
        """Move a fully written staging dir into place; returns where it now lies."""

    def completed(self, record: dict, adapter_dir: Path | None, adapter_bytes: int | None) -> None:
        """The run's final record (the adapter committed already, when there is one)."""


def write_line(msg: str, progress=None, stream=None) -> None:
    """A log line; through a terminal progress bar's `write` when there is one (so the bar is not torn)."""
    write = getattr(progress, "write", None)
    if write is not None:
        write(msg)
    else:
        print(msg, file=stream or sys.stdout, flush=True)


class LogReporter:
    """The reporter for library use without a store (`engine.train.run(spec)` from a notebook or script).

    Logs to stderr, caches nothing, and keeps what it was told on itself (`facts`, `rows`, `epochs`,
    `record`). The adapter is saved only when `out_dir` is given, as `out_dir/<run_id>`; call `cancel()`
    (from another thread, say) to stop the run at its next flush.
    """

    def __init__(self, run_id: str | None = None, out_dir: str | Path | None = None, progress=None):
        self.run_id = run_id or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress  # called progress(step, total, loss) every step, like the CLI's bar
        self.facts: dict[str, Any] = {}
        self.rows: list[StepRow] = []
        self.epochs: list[dict] = []
        self.record: dict | None = None
        self._cancel = False

    def cancel(self) -> None:
        self._cancel = True

    def log(self, msg: str) -> None:
        write_line(msg, self.progress, sys.stderr)

    def cache_dir(self) -> Path | None:
        return None  # a library call leaves no files behind it did not ask for

    def started(self, facts: dict[str, Any]) -> None:
        self.facts = dict(facts)

    def tick(self, step: int, total: int, loss: float) -> None:
        if self.progress:
            self.progress(step, total, loss)

    def steps(self, rows: list[StepRow], step: int, total: int, loss: float, eta: float | None) -> None:
        self.rows.extend(rows)

    def epoch(self, epochs: list[dict]) -> None:
        self.epochs = list(epochs)

    def cancel_requested(self) -> bool:
        return self._cancel

    def staging_dir(self) -> Path | None:
        if self.out_dir is None:
            return None
        # written beside its final place and renamed, so a listed adapter is always complete
        staging = self.out_dir / f".tmp-{self.run_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path) -> Path:
        final = staging.parent / self.run_id
        if final.exists():
            shutil.rmtree(final)
        staging.replace(final)
        return final

    def completed(self, record: dict, adapter_dir: Path | None, adapter_bytes: int | None) -> None:
        self.record = record
