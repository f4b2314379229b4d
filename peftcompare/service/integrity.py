"""Integrity of a store: run records against adapter directories, without importing torch.

`python -m peftcompare check` reports what is wrong (exit 1) or nothing (exit 0); `--fix` repairs what can
be repaired without losing data: stale "running" runs become interrupted, orphan staging directories go.
Adapters with no record are reported, never deleted: they may be someone's only copy.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.service import jobs
from peftcompare.service.store import RUN_ID, is_stale

_STAGING = re.compile(r"^\.tmp-(?P<run_id>.+)-(?P<pid>\d+)$")


@dataclass(frozen=True)
class Problem:
    kind: str  # database | corrupt_record | missing_adapter | corrupt_adapter | extra_adapter | orphan_staging | stale_running
    run_id: str | None
    message: str

    def line(self) -> str:
        return f"{self.kind}: {self.run_id + ': ' if self.run_id else ''}{self.message}"


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (None when it adds up); the contract lives in engine.adapters."""
    from peftcompare.engine import (
        adapters,  # torch-free; service reaches the engine only inside functions
    )

    return adapters.safetensors_problem(path)


def adapter_problems(path: Path, run_id: str | None = None) -> list[str]:
    """Everything wrong with one adapter directory: metadata, weights, pickles, links (see engine.adapters)."""
    from peftcompare.engine import (
        adapters,  # torch-free; service reaches the engine only inside functions
    )

    return adapters.adapter_problems(path, run_id)


def check(store, fix: bool = False) -> list[Problem]:
    """All problems of a store; with fix=True the repairable ones are repaired (and still reported)."""

    problems: list[Problem] = []
    with store._conn() as conn:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        rows = [dict(r) for r in conn.execute("SELECT run_id, status, method, spec_json, pid, pid_started, "
                                              "supervisor_pid, supervisor_started FROM runs")]
    if verdict != "ok":
        problems.append(Problem("database", None, f"SQLite quick_check: {verdict}"))
    runs = {r["run_id"]: r for r in rows}
    for r in rows:
        run_id = r["run_id"]
        try:
            spec = RunSpec.from_json(r["spec_json"] or "")
        except ValueError as exc:
            problems.append(Problem("corrupt_record", run_id, f"spec does not parse ({exc})"))
            continue
        if r["status"] == "running" and is_stale(r):
            problems.append(Problem("stale_running", run_id, "marked running but its process is gone"))
        if r["status"] != "completed" or not _trains(spec.method):
            continue
        adir = store.adapters_dir / run_id
        if not adir.exists():
            problems.append(Problem("missing_adapter", run_id, f"completed but {adir.name}/ is missing"))
            continue
        for why in adapter_problems(adir, run_id):
            problems.append(Problem("corrupt_adapter", run_id, why))
    for entry in sorted(store.adapters_dir.iterdir()):
        name = entry.name
        staged = _STAGING.match(name)
        if staged:
            if not jobs.pid_alive(int(staged["pid"])):
                problems.append(Problem("orphan_staging", staged["run_id"], f"{name}/ left by an unfinished save"))
            continue
        if name.startswith(".") or name == ".gitkeep":
            continue
        if not RUN_ID.match(name) or name not in runs:
            problems.append(Problem("extra_adapter", name, "adapter directory without a run record"))
    if fix:
        jobs.reconcile(store)
        for pr in problems:
            if pr.kind == "orphan_staging":
                for d in store.adapters_dir.glob(f".tmp-{pr.run_id}-*"):
                    m = _STAGING.match(d.name)
                    if m and not jobs.pid_alive(int(m["pid"])):
                        shutil.rmtree(d, ignore_errors=True)
    return problems


def _trains(method: str) -> bool:

    try:
        return methods.get_method(method).trains
    except ValueError:
        return False
