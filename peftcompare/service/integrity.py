"""Integrity of a store: run records against adapter directories, without importing torch.

`python -m peftcompare check` reports what is wrong (exit 1) or nothing (exit 0); `--fix` repairs what can
be repaired without losing data: stale "running" runs become interrupted, orphan staging directories go.
Adapters with no record are reported, never deleted: they may be someone's only copy.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # formats that can execute code on load
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20
_STAGING = re.compile(r"^\.tmp-(?P<run_id>.+)-(?P<pid>\d+)$")


@dataclass(frozen=True)
class Problem:
    kind: str  # database | corrupt_record | missing_adapter | corrupt_adapter | extra_adapter | orphan_staging | stale_running
    run_id: str | None
    message: str

    def line(self) -> str:
        return f"{self.kind}: {self.run_id + ': ' if self.run_id else ''}{self.message}"


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (None when its header and sizes add up). Reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated (no header)"
            n = struct.unpack("<Q", head)[0]
            if n > MAX_HEADER_BYTES or 8 + n > size:
                return f"{path.name} is truncated or not a safetensors file"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name} has an unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            b, e = info["data_offsets"]
            want = math.prod(int(d) for d in info["shape"]) * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            return f"{path.name}: tensor {name} has a bad header entry"
        if not (isinstance(b, int) and isinstance(e, int)) or e - b != want or b < 0:
            return f"{path.name}: tensor {name} has inconsistent offsets"
        end = max(end, e)
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes, header says {8 + n + end})"
    return None


def adapter_problems(path: Path, run_id: str | None = None) -> list[str]:
    """Everything wrong with one adapter directory: metadata, weights, pickles, links."""
    from peftcompare.core import methods
    from peftcompare.core.spec import RunSpec

    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return [f"{p.name} is not a directory"]
    out = []
    for f in p.rglob("*"):
        if f.is_symlink():
            out.append(f"{f.relative_to(p)} is a symbolic link")
        elif f.suffix.lower() in PICKLE_SUFFIXES:
            out.append(f"{f.relative_to(p)} is a pickle file (only safetensors are loaded)")
    meta = p / "run.json"
    if not meta.is_file():
        return out + ["no run.json (incomplete or not made by peftcompare)"]
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        spec = RunSpec.from_dict(record["spec"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return out + [f"run.json is corrupt ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"]
    if run_id is not None and record.get("run_id") != run_id:
        out.append(f"run.json belongs to run {record.get('run_id')!r}")
    m = methods.get_method(spec.method)
    weights = p / ("adapter_model.safetensors" if m.make_config is not None else "trainable.safetensors")
    if not weights.is_file():
        out.append(f"no {weights.name} (incomplete adapter)")
    else:
        bad = safetensors_problem(weights)
        if bad:
            out.append(bad)
    if m.make_config is not None:
        try:
            json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out.append("adapter_config.json is missing or corrupt")
    return out


def check(store, fix: bool = False) -> list[Problem]:
    """All problems of a store; with fix=True the repairable ones are repaired (and still reported)."""
    from peftcompare.service import jobs
    from peftcompare.core.spec import RunSpec
    from peftcompare.service.store import RUN_ID, is_stale

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
    from peftcompare.core import methods

    try:
        return methods.get_method(method).trains
    except ValueError:
        return False
