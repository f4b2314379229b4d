"""The results store: one SQLite file (WAL, many writers) plus the adapters directory.

Every write to the store home goes through here. A run record has three parts, like PEFT's
method_comparison: what was asked (spec, versions, data fingerprint), what happened (status, parameters,
time, memory, size) and what was measured (per-step loss, per-epoch and final metrics).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.service import procs

SCHEMA_VERSION = 5
REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ACTIVE = ("queued", "running")
FINAL = ("completed", "failed", "cancelled", "interrupted")

_COLUMNS = {  # name -> SQL type; JSON columns end in _json
    "run_id": "TEXT PRIMARY KEY", "spec_hash": "TEXT", "spec_json": "TEXT NOT NULL", "task": "TEXT",
    "method": "TEXT", "capacity": "INTEGER", "seed": "INTEGER", "model_name": "TEXT", "status": "TEXT NOT NULL",
    "created_at": "REAL", "started_at": "REAL", "finished_at": "REAL", "pid": "INTEGER", "error": "TEXT",
    "trainable_params": "INTEGER", "total_params": "INTEGER", "metrics_json": "TEXT", "epochs_json": "TEXT",
    "train_runtime": "REAL", "train_samples_per_second": "REAL", "eval_runtime": "REAL",
    "peak_memory_mb": "REAL", "adapter_bytes": "INTEGER", "adapter_dir": "TEXT", "versions_json": "TEXT",
    "data_fingerprint": "TEXT", "data_source": "TEXT", "progress": "REAL", "step": "INTEGER",
    "total_steps": "INTEGER", "current_loss": "REAL", "eta_s": "REAL", "cancel_requested": "INTEGER DEFAULT 0",
    "precision": "TEXT", "device": "TEXT", "owner": "TEXT", "heartbeat": "REAL", "fast_paths_json": "TEXT",
    "world_size": "INTEGER", "pid_started": "INTEGER", "supervisor_pid": "INTEGER", "supervisor_started": "INTEGER",
    # how the reported state was chosen (split, its size, the score there) and what the run was given
    "best_epoch": "INTEGER", "selection_json": "TEXT", "budget_json": "TEXT", "train_flops": "REAL",
    "model_fingerprint": "TEXT",
    "stored_params": "INTEGER",  # tensor elements in the saved adapter (can differ from trainable_params)
    # runs queued to train together in one process (engine/packing.py) share a pack id; PACK_ALONE marks a run
    # queued with packing asked for that trains alone (its fast_paths say why)
    "pack_id": "TEXT",
}
# columns added after schema 1: (version, column)
_MIGRATIONS = [(2, "eval_runtime"), (2, "fast_paths_json"), (2, "world_size"), (3, "pid_started"),
               (3, "supervisor_pid"), (3, "supervisor_started"), (4, "best_epoch"), (4, "selection_json"),
               (4, "budget_json"), (4, "train_flops"), (4, "model_fingerprint"), (4, "stored_params"),
               (5, "pack_id")]
PACK_ALONE = "alone"
STALE_ERROR = "the training process disappeared (killed, crashed or machine restart)"


def _with_identity(values: dict) -> dict:
    """A pid is stored with its start time, so a later process that reuses the number is not taken for it."""
    if "pid" in values:
        values["pid_started"] = procs.start_ticks(values["pid"])
    return values


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """--home, else PEFTCOMPARE_HOME, else the repository (results/ and adapters/ beside the code)."""
    chosen = home or os.environ.get("PEFTCOMPARE_HOME") or REPO_ROOT
    return Path(os.path.expanduser(str(chosen))).resolve()


def new_run_id(spec: RunSpec) -> str:
    cap = f"-{spec.capacity}" if spec.capacity and methods.get_method(spec.method).capacity_name else ""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.task[:5]}-{spec.method}{cap}-s{spec.seed}-{uuid.uuid4().hex[:6]}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"run_id: {run_id!r} is not a valid run id")
    return run_id


class Store:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = resolve_home(home)
        self.results_dir = self.home / "results"
        self.adapters_dir = self.home / "adapters"
        self.logs_dir = self.home / "results" / "logs"
        self.cache_dir = self.home / "results" / "cache"
        self.db_path = self.results_dir / "peftcompare.sqlite"
        for d in (self.results_dir, self.adapters_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    # -- connection ---------------------------------------------------------------------------------
    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=60000")
        try:
            if write:
                # take the write lock up front so read-modify-write sequences never interleave
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            else:
                yield conn
        finally:
            conn.close()

    def _init_schema(self) -> None:
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn(write=True) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(f"store: {self.db_path} has schema {version}, newer than this peftcompare "
                                 f"({SCHEMA_VERSION}); upgrade peftcompare")
            cols = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items())
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            conn.execute("CREATE TABLE IF NOT EXISTS steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, "
                         "epoch REAL, loss REAL, learning_rate REAL, t REAL, PRIMARY KEY (run_id, step))")
            # schema 4: every evaluated example's answer and score, one compressed JSON document per (run, split)
            conn.execute("CREATE TABLE IF NOT EXISTS examples (run_id TEXT NOT NULL, split TEXT NOT NULL, "
                         "n INTEGER, data BLOB NOT NULL, PRIMARY KEY (run_id, split))")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at)")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_spec ON runs(spec_hash)")
            have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            for _, col in _MIGRATIONS:
                if col not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {_COLUMNS[col]}")
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- runs ---------------------------------------------------------------------------------------
    def create_run(self, spec: RunSpec, status: str = "queued", owner: str | None = None,
                   run_id: str | None = None, pid: int | None = None, pack_id: str | None = None) -> str:
        """A new record; a run created as running gets its process in the same write (pid), so no reader
        ever sees a running run without an owner and takes it for an interrupted one."""
        spec = spec.resolved()
        run_id = check_run_id(run_id or new_run_id(spec))
        now = time.time()
        with self._conn(write=True) as conn:
            conn.execute(
                "INSERT INTO runs (run_id, spec_hash, spec_json, task, method, capacity, seed, model_name, "
                "status, created_at, owner, progress, cancel_requested, pid, pid_started, started_at, pack_id) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,0,0,?,?,?,?)",
                (run_id, spec.spec_hash(), spec.to_json(), spec.task, spec.method, spec.capacity, spec.seed,
                 spec.model_name, status, now, owner, pid, procs.start_ticks(pid), now if pid else None, pack_id))
        return run_id

    def update(self, run_id: str, **values: Any) -> None:
        if not values:
            return
        bad = set(values) - set(_COLUMNS)
        if bad:
            raise KeyError(f"unknown run column(s): {bad}")
        values = _with_identity(values)
        values = {k: (json.dumps(v) if k.endswith("_json") and not isinstance(v, str) and v is not None else v)
                  for k, v in values.items()}
        sets = ", ".join(f"{k}=?" for k in values)
        with self._conn(write=True) as conn:
            conn.execute(f"UPDATE runs SET {sets} WHERE run_id=?", (*values.values(), run_id))

    def transition(self, run_id: str, to: str, only_from: tuple[str, ...], **values: Any) -> bool:
        """Set status `to` only if the run is in one of `only_from` (atomic); True when it changed."""
        values = _with_identity(values)
        values = {k: (json.dumps(v) if k.endswith("_json") and not isinstance(v, str) and v is not None else v)
                  for k, v in values.items()}
        sets = ", ".join(["status=?", *(f"{k}=?" for k in values)])
        marks = ",".join("?" * len(only_from))
        with self._conn(write=True) as conn:
            cur = conn.execute(f"UPDATE runs SET {sets} WHERE run_id=? AND status IN ({marks})",
                               (to, *values.values(), run_id, *only_from))
            return cur.rowcount == 1

    def claim_next(self, pid: int | None = None) -> dict | None:
        """Atomically move the oldest queued run to running; None when the queue is empty. The claiming
        worker (pid) supervises the run: it owns it while its child process starts, runs and ends, and it
        writes the final status when the child dies, so the run is stale only when both are gone."""
        started = procs.start_ticks(pid)
        with self._conn(write=True) as conn:
            row = conn.execute("SELECT run_id FROM runs WHERE status='queued' ORDER BY created_at, rowid "
                               "LIMIT 1").fetchone()
            if row is None:
                return None
            self._claim(conn, row[0], pid, started)
        return self.get(row[0])

    @staticmethod
    def _claim(conn, run_id: str, pid: int | None, started: int | None) -> None:
        """A queued run moved to running under the claiming worker (pid), which supervises it."""
        now = time.time()
        conn.execute("UPDATE runs SET status='running', started_at=?, pid=?, pid_started=?, supervisor_pid=?, "
                     "supervisor_started=?, heartbeat=? WHERE run_id=? AND status='queued'",
                     (now, pid, started, pid, started, now, run_id))

    def claim_pack(self, run: dict, pid: int | None = None) -> list[dict]:
        """The claimed `run` and every other queued run of its pack, all moved to running under one worker
        (in one write); [run] for a run without a pack."""
        pack = run.get("pack_id")
        if not pack or pack == PACK_ALONE:
            return [run]
        started = procs.start_ticks(pid)
        with self._conn(write=True) as conn:
            rows = conn.execute("SELECT run_id FROM runs WHERE status='queued' AND pack_id=? ORDER BY created_at, "
                                "rowid", (pack,)).fetchall()
            for (run_id,) in rows:
                self._claim(conn, run_id, pid, started)
        return [run] + [self.get(r[0]) for r in rows]

    def reconcile(self) -> list[str]:
        """Mark running runs whose process (and supervising worker) are gone as interrupted. Every listing
        calls this, so a `kill -9`-ed run never shows as running to the CLI, the pages or a sweep."""
        with self._conn() as conn:
            rows = conn.execute("SELECT run_id, pid, pid_started, supervisor_pid, supervisor_started FROM runs "
                                "WHERE status='running'").fetchall()
        fixed = []
        for r in rows:
            if is_stale(dict(r)) and self.transition(r["run_id"], "interrupted", ("running",),
                                                     finished_at=time.time(), error=STALE_ERROR):
                fixed.append(r["run_id"])
        return fixed

    def add_steps(self, run_id: str, rows: list[tuple[int, float, float, float]]) -> None:
        """rows: (step, epoch, loss, learning_rate)."""
        if not rows:
            return
        now = time.time()
        with self._conn(write=True) as conn:
            conn.executemany("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?,?)",
                             [(run_id, s, e, l, lr, now) for s, e, l, lr in rows])

    def steps(self, run_ids: list[str] | str) -> list[dict]:
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._conn() as conn:
            return [dict(r) for r in conn.execute(
                f"SELECT run_id, step, epoch, loss, learning_rate FROM steps WHERE run_id IN ({marks}) "
                "ORDER BY run_id, step", ids)]

    def put_examples(self, run_id: str, split: str, per_example: dict) -> None:
        """Every evaluated example's answer and score (lists aligned on the examples, with their content
        keys), zlib-compressed JSON: 872 SST-2 answers take a few kB."""
        n = len(per_example.get("key") or [])
        blob = zlib.compress(json.dumps(per_example, separators=(",", ":")).encode(), 6)
        with self._conn(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO examples VALUES (?,?,?,?)", (run_id, split, n, blob))

    def examples(self, run_id: str, split: str = "validation") -> dict | None:
        """The per-example answers `put_examples` stored, or None (a run from before schema 4, a failed run)."""
        with self._conn() as conn:
            row = conn.execute("SELECT data FROM examples WHERE run_id=? AND split=?", (run_id, split)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(zlib.decompress(row[0]))
        except (zlib.error, ValueError):
            return None

    def with_examples(self, run_ids: list[str], split: str = "validation") -> set[str]:
        """Which of these runs have stored per-example answers."""
        if not run_ids:
            return set()
        marks = ",".join("?" * len(run_ids))
        with self._conn() as conn:
            return {r[0] for r in conn.execute(f"SELECT run_id FROM examples WHERE split=? AND run_id IN ({marks})",
                                               (split, *run_ids))}

    def get(self, run_id: str) -> dict | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _decode(row) if row else None

    def list_runs(self, status: tuple[str, ...] | None = None, task: str | None = None,
                  owner: str | None = None) -> list[dict]:
        self.reconcile()
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if status:
            sql += f" AND status IN ({','.join('?' * len(status))})"
            args += list(status)
        if task:
            sql += " AND task=?"
            args.append(task)
        if owner:
            sql += " AND owner=?"
            args.append(owner)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [_decode(r) for r in rows]

    def find_completed(self, spec: RunSpec) -> dict | None:
        """A completed or still active run with the same spec (what a sweep skips)."""
        self.reconcile()  # a killed run is not "still active": the sweep must run it again
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM runs WHERE spec_hash=? AND status IN ('completed','queued',"
                               "'running') ORDER BY created_at DESC LIMIT 1", (spec.spec_hash(),)).fetchone()
        return _decode(row) if row else None

    def request_cancel(self, run_id: str) -> bool:
        """Queued runs are cancelled at once; running ones are flagged and stop at their next check."""
        if self.transition(run_id, "cancelled", ("queued",), finished_at=time.time(), cancel_requested=1,
                           error="cancelled before it started"):
            return True
        with self._conn(write=True) as conn:
            cur = conn.execute("UPDATE runs SET cancel_requested=1 WHERE run_id=? AND status='running'", (run_id,))
            return cur.rowcount == 1

    def cancel_requested(self, run_id: str) -> bool:
        with self._conn() as conn:
            row = conn.execute("SELECT cancel_requested FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete(self, run_id: str) -> None:
        """Remove a finished run, its steps, adapter, log and spec. No policy here: callers go through
        service.runs.delete_run, which refuses on a public instance."""
        check_run_id(run_id)
        run = self.get(run_id)
        if run is None:
            raise ValueError(f"run_id: no run {run_id}")
        if run["status"] in ACTIVE:
            raise ValueError(f"run {run_id} is {run['status']}: cancel it before deleting")
        with self._conn(write=True) as conn:
            conn.execute("DELETE FROM steps WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM examples WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id=?", (run_id,))
        shutil.rmtree(self.adapter_path(run_id), ignore_errors=True)
        for p in (self.log_path(run_id), self.spec_path(run_id)):
            p.unlink(missing_ok=True)

    # -- files --------------------------------------------------------------------------------------
    def adapter_path(self, run_id: str) -> Path:
        return self.adapters_dir / check_run_id(run_id)

    def log_path(self, run_id: str) -> Path:
        return self.logs_dir / f"{check_run_id(run_id)}.log"

    def spec_path(self, run_id: str) -> Path:
        return self.logs_dir / f"{check_run_id(run_id)}.spec.json"

    def staging_path(self, run_id: str) -> Path:
        """Adapters are written here and renamed into place, so a listed adapter is always complete."""
        p = self.adapters_dir / f".tmp-{check_run_id(run_id)}-{os.getpid()}"
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        return p

    def commit_adapter(self, run_id: str, staging: Path) -> Path:
        final = self.adapter_path(run_id)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def discard_staging(self, run_id: str, pid: int | None = None) -> None:
        """Remove a run's staging dirs (of one process, or of all), after it ended without committing."""
        for p in self.adapters_dir.glob(f".tmp-{check_run_id(run_id)}-{pid if pid is not None else '*'}"):
            shutil.rmtree(p, ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove staging dirs of dead processes; a CLI run or an import saving right now keeps its own."""
        n = 0
        for p in self.adapters_dir.glob(".tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and procs.alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    def import_run(self, row: dict, steps: list[tuple], staging: Path | None, overwrite: bool = False) -> None:
        """Insert a validated run from a bundle; its adapter (already in `staging`) goes into place first,
        so a completed record never points at a missing adapter."""
        run_id = check_run_id(row["run_id"])
        existing = self.get(run_id)
        if existing and not overwrite:
            raise ValueError(f"run_id: run {run_id} already exists (import with overwrite to replace it)")
        if existing and existing["status"] in ACTIVE:
            raise ValueError(f"run {run_id} is {existing['status']}: cancel it before replacing it")
        row = {k: v for k, v in row.items() if k in _COLUMNS}
        row["adapter_dir"] = str(self.commit_adapter(run_id, staging)) if staging is not None else None
        if staging is None:
            shutil.rmtree(self.adapters_dir / run_id, ignore_errors=True)
        cols = ", ".join(row)
        with self._conn(write=True) as conn:
            conn.execute("DELETE FROM steps WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM examples WHERE run_id=?", (run_id,))  # a replaced run's answers are not its
            conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({','.join('?' * len(row))})",
                         tuple(row.values()))
            conn.executemany("INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?,?)",
                             [(run_id, *s) for s in steps])

    def counts(self) -> dict[str, int]:
        self.reconcile()
        with self._conn() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}


def is_stale(run: dict) -> bool:
    """A running run whose own process and supervising worker have both gone."""
    return not (procs.alive(run.get("pid"), run.get("pid_started"))
                or procs.alive(run.get("supervisor_pid"), run.get("supervisor_started")))


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in list(d):
        if k.endswith("_json"):
            try:
                d[k[:-5]] = json.loads(d[k]) if d[k] else None
            except ValueError:
                d[k[:-5]] = None
    d["spec"] = RunSpec.from_json(d["spec_json"]) if d.get("spec_json") else None
    return d


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
