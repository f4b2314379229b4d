"""Many writers on one store at once (threads, processes, the queue, the CLI): nothing lost, nothing torn.
And the schema: an old database is migrated, a newer one is refused with one line."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from peftcompare.core.spec import RunSpec
from peftcompare.service.store import _COLUMNS, _MIGRATIONS, SCHEMA_VERSION, Store

REPO = Path(__file__).resolve().parents[1]
N_PER_WRITER = 40
STEPS_PER_RUN = 3

# one writer: what the app (a thread) or a CLI / queue process does to the store, as fast as it can
WRITER = r'''
import json, sys
if __name__ == "__main__":
    sys.path.insert(0, sys.argv[4])
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store

def write(home, name, n):
    store = Store(home)
    spec = RunSpec(model_name="builtin:tiny-t5", train_samples=16)
    writes = 0
    for i in range(n):
        run_id = f"{name}-{i}"
        store.create_run(spec, status="queued", owner=name, run_id=run_id)
        store.update(run_id, progress=i / n, metrics_json={"writer": name, "i": i})
        store.add_steps(run_id, [(s, s / 3, 1.0 / s, 1e-3) for s in range(1, 4)])
        writes += 3
    return writes

if __name__ == "__main__":
    print(json.dumps({"writes": write(sys.argv[1], sys.argv[2], int(sys.argv[3]))}))
'''

# the queue: claims runs while they are being written and finishes them
CLAIMER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from peftcompare.service.store import Store

store, claimed, idle = Store(sys.argv[1]), [], 0
stop_file = sys.argv[2]
while True:
    run = store.claim_next(pid=os.getpid())
    if run is None:
        if os.path.exists(stop_file):
            idle += 1
            if idle > 3:
                break
        time.sleep(0.01)
        continue
    idle = 0
    ok = store.transition(run["run_id"], "completed", ("running",), metrics_json={"by": os.getpid()})
    claimed.append([run["run_id"], ok])
print(json.dumps(claimed))
'''


def test_concurrent_writers_lose_nothing(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "claimer.py").write_text(CLAIMER)
    stop = tmp_path / "stop"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    children = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)
        children.append(p)
        return p

    try:
        claimers = [start([sys.executable, str(tmp_path / "claimer.py"), str(home), str(stop), str(REPO)])
                    for _ in range(2)]
        procs = [start([sys.executable, str(tmp_path / "writer.py"), str(home), f"proc{w}", str(N_PER_WRITER),
                        str(REPO)]) for w in range(3)]
        cli = [start([sys.executable, "-m", "peftcompare", "--home", str(home), "enqueue", "--no_worker",
                      "--model_name", "builtin:tiny-t5", "--seed", str(seed), "--train_samples", "16"], cwd=REPO)
               for seed in (1, 2)]
        sys.path.insert(0, str(tmp_path))
        try:
            import writer  # the same code as the processes, now in threads of this process (the app)
        finally:
            sys.path.remove(str(tmp_path))
        thread_writes = []
        threads = [threading.Thread(target=lambda w=w: thread_writes.append(
            writer.write(str(home), f"thread{w}", N_PER_WRITER))) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writes = sum(thread_writes)
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            writes += json.loads(out)["writes"]
        cli_ids = []
        for p in cli:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            cli_ids.append(out.strip())
            writes += 1
        stop.write_text("")
        claimed = []
        for p in claimers:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            claimed += json.loads(out)
        writes += 2 * len(claimed)  # claim + completion
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()

    expected = {f"{kind}{w}-{i}" for kind in ("thread", "proc") for w in range(3) for i in range(N_PER_WRITER)}
    expected |= set(cli_ids)
    runs = {r["run_id"]: r for r in store.list_runs()}
    lost = expected - set(runs)
    assert not lost and len(runs) == len(expected)
    claimed_ids = [c[0] for c in claimed]
    assert len(claimed_ids) == len(set(claimed_ids)), "a run was claimed twice"
    assert all(ok for _, ok in claimed)
    assert set(claimed_ids) == expected, "the queue missed runs"
    steps = store.steps(sorted(expected))
    torn = 0
    for run_id, run in runs.items():
        torn += run["status"] != "completed"
        if run_id not in cli_ids:
            name, i = run_id.rsplit("-", 1)
            torn += run["spec"].model_name != "builtin:tiny-t5" or run["owner"] != name
            torn += abs(run["progress"] - int(i) / N_PER_WRITER) > 1e-9
    torn += len(steps) != STEPS_PER_RUN * (len(expected) - len(cli_ids))
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert torn == 0
    print(f"\nconcurrent writes: {writes} (3 threads, 3 processes, 2 CLI processes, 2 queue claimers), "
          f"records: {len(runs)}, lost: {len(lost)}, torn: {torn}, claimed twice: 0")


def _v1_database(path: Path) -> None:
    """A store as peftcompare schema 1 wrote it: no migrated columns, user_version 1."""
    path.parent.mkdir(parents=True)
    added = {col for _, col in _MIGRATIONS}
    cols = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items() if k not in added)
    spec = RunSpec(model_name="builtin:tiny-t5").resolved()
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE runs ({cols})")
        conn.execute("CREATE TABLE steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch REAL, loss REAL, "
                     "learning_rate REAL, t REAL, PRIMARY KEY (run_id, step))")
        conn.execute("INSERT INTO runs (run_id, spec_hash, spec_json, task, method, status, metrics_json) "
                     "VALUES (?,?,?,?,?,?,?)", ("old-run", spec.spec_hash(), spec.to_json(), spec.task,
                                                spec.method, "completed", json.dumps({"f1": 0.5})))
        conn.execute("INSERT INTO steps VALUES ('old-run', 1, 0.5, 2.0, 0.001, 0)")
        conn.execute("PRAGMA user_version=1")


def test_v1_database_is_migrated(tmp_path):
    home = tmp_path / "home"
    _v1_database(home / "results" / "peftcompare.sqlite")
    store = Store(home)
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    assert {col for _, col in _MIGRATIONS} <= have
    old = store.get("old-run")
    assert old["metrics"] == {"f1": 0.5} and old["eval_runtime"] is None and old["world_size"] is None
    assert store.steps("old-run")[0]["loss"] == 2.0
    store.update("old-run", eval_runtime=1.5, world_size=1)  # the new columns work on the old record
    assert store.get("old-run")["eval_runtime"] == 1.5
    Store(home)  # opening again is a no-op
    assert len(store.list_runs()) == 1


def test_newer_schema_is_refused_with_one_line(tmp_path):
    home = tmp_path / "home"
    db = home / "results" / "peftcompare.sqlite"
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, future_column BLOB)")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 7}")
    try:
        Store(home)
    except ValueError as exc:
        assert "newer" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("a newer schema was opened")
    r = subprocess.run([sys.executable, "-m", "peftcompare", "--home", str(home), "results"], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: store:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with sqlite3.connect(db) as conn:  # refused means untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 7
        assert [r[1] for r in conn.execute("PRAGMA table_info(runs)")] == ["run_id", "future_column"]
