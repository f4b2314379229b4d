"""Faults in real training subprocesses: the run is marked failed with its reason, no half-written adapter
is listed, the queue goes on, stale runs are reconciled, cancel is clean.

Faults are injected from outside the product: the worker (run in this process) starts each child through a
small wrapper script that patches one function in the child and then calls the normal CLI entry point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from peftcompare.service import integrity, jobs
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store

BASE = dict(model_name="builtin:tiny-t5", method="lora", capacity=4, num_train_epochs=1, train_samples=16,
            eval_samples=8, per_device_train_batch_size=8)

WRAPPER = r'''
import errno, os, pathlib, resource, signal, sys, time
sys.path.insert(0, os.getcwd())
fault, args = sys.argv[1], sys.argv[2:]
from peftcompare.service.store import Store

if fault == "hung":  # a training process that hangs: deaf to its cancel flag and to SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Store(args[args.index("--home") + 1]).update(args[args.index("--run_id") + 1], step=1)
    while True:
        time.sleep(1)
from peftcompare import cli
from peftcompare.engine import evaluate, train

if fault == "exception":
    def evaluate_boom(*a, **k):
        raise RuntimeError("injected fault: evaluation crashed")
    evaluate.evaluate = evaluate_boom
elif fault == "sigkill_training":
    train.FLUSH_SECONDS = 0.0
    real_add_steps = Store.add_steps
    def add_steps(self, run_id, rows):
        real_add_steps(self, run_id, rows)  # the first steps reach the store, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    Store.add_steps = add_steps
elif fault == "sigkill_save":
    real_save = train.save_adapter
    def save_adapter(model, spec, out, record, **kw):
        real_save(model, spec, out, record, **kw)  # the staging dir is full, the rename has not happened
        os.kill(os.getpid(), signal.SIGKILL)
    train.save_adapter = save_adapter
elif fault == "disk_full":
    real_write_text = pathlib.Path.write_text
    def write_text(self, data, *a, **k):
        if self.parent.name.startswith(".tmp-"):  # the disk fills while the adapter is being written
            with open(self, "w") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *a, **k)
    pathlib.Path.write_text = write_text
elif fault == "oom":
    real_prepare = train.prepare_model
    def prepare_model(*a, **k):
        model = real_prepare(*a, **k)
        # cap the address space a little above what is mapped now: the first big batch cannot fit
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        return model
    train.prepare_model = prepare_model
elif fault != "none":
    raise SystemExit(f"unknown fault {fault}")
sys.exit(cli.main(args))
'''


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """new_store() makes a store whose worker starts each run through the fault wrapper; faults[run_id]
    picks the fault. Two stores with a worker each run side by side: the test takes half the time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    wrapper = tmp_path / "fault_child.py"
    wrapper.write_text(WRAPPER)
    faults: dict[str, str] = {}

    def child_command(store_, run_ids):
        run_id = run_ids[0]  # these runs are queued one by one
        return [sys.executable, str(wrapper), faults.get(run_id, "none"), "train", "--run_id", run_id,
                "--home", str(store_.home)]

    monkeypatch.setattr(jobs, "child_command", child_command)
    return (lambda name: Store(tmp_path / name)), faults, tmp_path


def _long_text_file(path: Path) -> str:
    # attention scores alone: 32 x 4 heads x 2048^2 floats = 2 GiB, far over the 256 MiB the child has left
    rows = [{"sentence": " ".join(["word"] * 2000), "label": i % 2} for i in range(32)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _workers(jobs_by_store: dict) -> float:
    """Run one worker per store at the same time until each has done its jobs; returns the wall time."""
    threads = [threading.Thread(target=jobs.run_worker, args=(store,), kwargs=dict(idle_exit=0, max_jobs=n))
               for store, n in jobs_by_store.items()]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    return time.monotonic() - t0


def test_faults_fail_cleanly_and_the_queue_goes_on(faulty):
    new_store, faults, tmp = faulty
    a, b = new_store("a"), new_store("b")
    plan = [
        (a, "sigkill_training", {}, "killed by signal 9"),
        (a, "exception", {}, "RuntimeError: injected fault: evaluation crashed"),
        (b, "oom", dict(train_file=_long_text_file(tmp / "long.jsonl"), max_source_length=2048,
                        per_device_train_batch_size=32, train_samples=32), "out of memory"),
        (b, "disk_full", {}, "disk full"),
        (b, "sigkill_save", {}, "killed by signal 9"),
    ]
    ids = []
    for store, fault, extra, _ in plan:
        run_id = jobs.enqueue(store, RunSpec(**{**BASE, **extra}))
        faults[run_id] = fault
        ids.append(run_id)
    ok_id = jobs.enqueue(a, RunSpec(**BASE))  # queued behind two faults: it must still run
    elapsed = _workers({a: 3, b: 3})

    survived = 0
    for run_id, (store, fault, _, reason) in zip(ids, plan):
        run = store.get(run_id)
        assert run["status"] == "failed", (fault, run["status"], run["error"])
        assert reason in run["error"], (fault, run["error"])
        assert "\n" not in run["error"]
        assert run["adapter_dir"] is None and not store.adapter_path(run_id).exists(), fault
        survived += 1
    assert a.get(ok_id)["status"] == "completed"
    assert a.adapter_path(ok_id).joinpath("adapter_model.safetensors").is_file()
    for store in (a, b):
        # the half-written adapters (disk full, killed during save) left nothing behind
        assert not list(store.adapters_dir.glob(".tmp-*"))
        assert integrity.check(store) == []
    print(f"\nfaults injected: {len(plan)}, survived: {survived} (run marked failed with its reason, no adapter "
          f"listed, the next job completed); {len(plan) + 1} real training subprocesses in {elapsed:.1f} s")


def test_cancel_queued_and_running_is_clean(faulty, monkeypatch):
    new_store, faults, _ = faulty
    monkeypatch.setattr(jobs, "CANCEL_GRACE_SECONDS", 1.0)
    a, b = new_store("a"), new_store("b")
    long = RunSpec(**{**BASE, "num_train_epochs": 1000, "eval_samples": 4})
    coop = jobs.enqueue(a, long)  # checks its cancel flag: stops by itself
    stubborn = jobs.enqueue(b, long)  # hangs, deaf to the flag and SIGTERM: the worker must kill it
    faults[stubborn] = "hung"
    queued = jobs.enqueue(a, long)
    assert a.request_cancel(queued)
    assert a.get(queued)["status"] == "cancelled"  # at once: it never starts

    runner = threading.Thread(target=_workers, args=({a: 1, b: 1},))
    runner.start()
    latencies = {}
    try:
        deadline = time.monotonic() + 90
        for store, run_id in ((a, coop), (b, stubborn)):
            while (store.get(run_id)["step"] or 0) < 1:  # training has really started
                assert time.monotonic() < deadline, "the run never started training"
                time.sleep(0.1)
        t0 = time.monotonic()
        assert a.request_cancel(coop) and b.request_cancel(stubborn)
        while len(latencies) < 2:
            for store, run_id in ((a, coop), (b, stubborn)):
                if run_id not in latencies and store.get(run_id)["status"] != "running":
                    latencies[run_id] = time.monotonic() - t0
            assert time.monotonic() - t0 < 30, "cancel did not stop the runs"
            time.sleep(0.1)
    finally:
        for store in (a, b):
            for r in store.list_runs(status=("queued", "running")):
                store.request_cancel(r["run_id"])
        runner.join(timeout=60)
    assert not runner.is_alive()
    for store, run_id in ((a, coop), (b, stubborn)):
        run = store.get(run_id)
        assert run["status"] == "cancelled", run
        assert not store.adapter_path(run_id).exists()
        assert not jobs.pid_alive(run["pid"])
    assert latencies[coop] < 10 and latencies[stubborn] < 10
    print(f"\ncancel: queued run cancelled at once; running runs stopped in {latencies[coop]:.1f} s (checks its "
          f"flag), {latencies[stubborn]:.1f} s (hung, deaf to the flag and SIGTERM: killed)")


def test_stale_running_runs_are_reconciled_on_restart(tmp_path):
    store = Store(tmp_path)
    spec = RunSpec(**BASE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stranger = subprocess.Popen(["sleep", "30"])  # a live pid that is not ours (pid reuse after a reboot)
    try:
        gone = store.create_run(spec, status="running")
        store.update(gone, pid=dead.pid)
        reused = store.create_run(spec, status="running")
        store.update(reused, pid=stranger.pid)
        alive = store.create_run(spec, status="running")
        store.update(alive, pid=os.getpid())  # this test process is alive and is ours
        orphan = store.adapters_dir / f".tmp-{gone}-{dead.pid}"
        orphan.mkdir()
        (orphan / "adapter_model.safetensors").write_bytes(b"half")
        saving = store.adapters_dir / f".tmp-{alive}-{os.getpid()}"  # a live save (a CLI run, an import)
        saving.mkdir()
        kinds = sorted(p.kind for p in integrity.check(store))
        assert kinds == ["orphan_staging", "stale_running", "stale_running"]
        # a worker starting after a crash reconciles and cleans before it takes any job
        assert jobs.run_worker(store, idle_exit=0, max_jobs=0) == 0
    finally:
        stranger.kill()
        stranger.wait()
    assert store.get(gone)["status"] == "interrupted"
    assert "disappeared" in store.get(gone)["error"]
    assert store.get(reused)["status"] == "interrupted"
    assert store.get(alive)["status"] == "running"
    assert not orphan.exists()
    assert saving.is_dir()  # not pulled from under a process that is still writing it
    saving.rmdir()
    store.update(alive, status="interrupted")
    assert integrity.check(store) == []


def _cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "peftcompare", "--home", str(home), *args], capture_output=True,
                         text=True, env=env, cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_kill_9_of_a_cli_train_reads_as_interrupted_everywhere(tmp_path):
    """No worker supervises a CLI `train`: when it is killed, every read path must say so by itself."""
    home = tmp_path / "home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "peftcompare", "--home", str(home), "train",
                             "--model_name", "builtin:tiny-t5", "--method", "lora", "--capacity", "4",
                             "--train_samples", "16", "--eval_samples", "8", "--num_train_epochs", "500",
                             "--per_device_train_batch_size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=str(Path(__file__).resolve().parents[1]))
    try:
        deadline = time.monotonic() + 90
        while True:  # wait until it is training (steps in the store), then kill it without warning
            runs = Store(home).list_runs() if (home / "results" / "peftcompare.sqlite").exists() else []
            if runs and (runs[0].get("step") or 0) > 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the training never started"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    run_id = runs[0]["run_id"]
    # the raw record still says running: nobody was there to write a final status
    with Store(home)._conn() as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()[0] == "running"
    listed = json.loads(_cli(home, "results", "--format", "json").stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "interrupted")]
    assert "disappeared" in Store(home).get(run_id)["error"]
    assert _cli(home, "check", check=False).returncode == 0
    assert _cli(home, "check", "--fix").returncode == 0


def test_a_live_cli_train_is_not_taken_for_interrupted(tmp_path):
    """The other side of the rule: listing while a run trains leaves it running (its pid and start match)."""
    store = Store(tmp_path)
    run_id = store.create_run(RunSpec(**BASE), status="running", pid=os.getpid())
    assert [r["status"] for r in store.list_runs()] == ["running"]
    # the same pid with another start time is a reused number, not this run's process
    store.update(run_id, pid=os.getpid())
    with store._conn(write=True) as conn:
        conn.execute("UPDATE runs SET pid_started=pid_started-1 WHERE run_id=?", (run_id,))
    assert [r["status"] for r in store.list_runs()] == ["interrupted"]
