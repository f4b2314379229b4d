"""The job queue: queued runs in the store, one subprocess per run, cancel, reconcile after a crash.

The worker is a detached process (it survives page refreshes and closed browsers). It claims the oldest
queued run, starts `python -m peftcompare train --run_id ID --home HOME`, watches the cancel flag and
exits after a while with an empty queue; the app starts it again when something is enqueued. On GPUs,
`worker --per_gpu N` keeps N such processes on each GPU.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from peftcompare.core import packs
from peftcompare.core.spec import RunSpec
from peftcompare.service import policy as public
from peftcompare.service import procs, runs, system
from peftcompare.service.store import PACK_ALONE, Store

CANCEL_GRACE_SECONDS = 10.0  # a run that ignores its cancel flag this long is killed
IDLE_EXIT_SECONDS = 30.0
POLL_SECONDS = 0.5


def pid_alive(pid: int | None) -> bool:
    return procs.alive(pid)


def reconcile(store: Store) -> list[str]:
    """Mark runs whose process is gone as interrupted (after an app, worker or machine restart)."""
    return store.reconcile()


def enqueue(store: Store, spec: RunSpec, owner: str | None = None) -> str:
    """Queue one spec as it is (a duplicate too). The app's pages and retry use `submit`, which also
    skips what the store already holds and preflights the data."""

    # enforced here, not only in the page, so no caller can queue past the public limits
    public.check_spec(spec.resolved())
    public.check_visitor_quota(store, owner)
    # a spec that can never run is refused here, before it has a record (callers check its data files)
    runs.check_model(spec)
    return _queue(store, spec, owner)


def _queue(store: Store, spec: RunSpec, owner: str | None, pack_id: str | None = None) -> str:
    run_id = store.create_run(spec, status="queued", owner=owner, pack_id=pack_id)
    store.spec_path(run_id).write_text(spec.resolved().to_json())
    return run_id


@dataclass(frozen=True)
class Submitted:
    """What `submit` did: the queued run ids (in order) and the specs it skipped, each with the run that
    already holds it (completed, queued or running)."""
    run_ids: list[str] = field(default_factory=list)
    skipped: list[tuple[RunSpec, dict]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.run_ids) + len(self.skipped)


def submit(store: Store, specs: list[RunSpec], owner: str | None = None, pack: int = 1) -> Submitted:
    """Queue `specs` with the whole enqueue policy checked once, before any record is written:

    1. the public instance's limits on every spec (model, sizes, methods, files);
    2. duplicates: a spec with a completed, queued or running twin in the store is skipped and reported,
       never queued again (nor twice within `specs`);
    3. the queue quota for what is left (public mode: the visitor's jobs and the whole queue);
    4. preflight of what is left (model, method vs model, data files and their columns), each data
       source once.

    Any refusal raises ValueError (one line) and queues nothing: a grid is queued whole or not at all.
    `pack` > 1: the runs that can train together are queued in packs of at most that many (the worker trains
    a pack in one process, engine/packing.py); the others are marked to train alone.
    Page, retry and presets call this; the worker must be started by the caller (`ensure_worker`)."""

    specs = [s.resolved() for s in specs]
    for s in specs:
        public.check_spec(s)
    todo, skipped, seen = [], [], set()
    for s in specs:
        if s.spec_hash() in seen:
            continue
        seen.add(s.spec_hash())
        twin = store.find_completed(s)
        if twin is None:
            todo.append(s)
        else:
            skipped.append((s, twin))
    if not todo:
        return Submitted([], skipped)
    public.check_visitor_quota(store, owner)
    if public.is_public():
        mine = len(store.list_runs(status=("queued", "running"), owner=owner))
        if mine + len(todo) > public.LIMITS.jobs_per_visitor:
            raise ValueError(f"{len(todo)} runs exceed this public instance's limit of "
                             f"{public.LIMITS.jobs_per_visitor} queued run(s) per visitor")
    runs.preflight_all(todo)
    if pack <= 1:
        return Submitted([_queue(store, s, owner) for s in todo], skipped)
    queued = []
    for group in packs.plan_packs(todo, pack):
        pack_id = uuid.uuid4().hex[:12] if len(group) > 1 else PACK_ALONE
        queued += [_queue(store, s, owner, pack_id) for s in group]
    return Submitted(queued, skipped)


def child_command(store: Store, run_ids: list[str]) -> list[str]:
    """The training process of claimed runs: one, or a pack (one process trains them all)."""
    return [sys.executable, "-m", "peftcompare", "train", *[a for r in run_ids for a in ("--run_id", r)],
            "--home", str(store.home)]


def _lock_path(store: Store) -> Path:
    return store.results_dir / "worker.lock"


def worker_running(store: Store) -> bool:
    try:
        with open(_lock_path(store), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True


def ensure_worker(store: Store) -> bool:
    """Start a detached worker unless one holds the lock. True when a new one was started."""
    if worker_running(store):
        return False
    log = open(store.logs_dir / "worker.log", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.Popen([sys.executable, "-m", "peftcompare", "worker", "--home", str(store.home)],
                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                     env=env, cwd=str(Path(__file__).resolve().parents[2]))
    return True


MAX_PER_GPU = 64


def worker_slots(per_gpu: int = 1, gpus: list[str] | None = None) -> list[str | None]:
    """Where the worker's children train: per_gpu slots on each visible GPU (each child sees its GPU alone,
    through CUDA_VISIBLE_DEVICES), or one slot with no GPU (a CPU run takes every core: two at once would
    only share them). gpus: the GPUs' ids (default: system.visible_gpus())."""
    if not 1 <= per_gpu <= MAX_PER_GPU:
        raise ValueError(f"per_gpu: train between 1 and {MAX_PER_GPU} runs at once on each GPU, got {per_gpu}")
    if gpus is None:
        gpus = system.visible_gpus()
    return [g for g in gpus for _ in range(per_gpu)] if gpus else [None]


def run_worker(store: Store, idle_exit: float = IDLE_EXIT_SECONDS, max_jobs: int | None = None,
               slots: list[str | None] | None = None) -> int:
    """Process the queue: one run (or pack) per slot at a time, each in its own supervised process; slots
    (worker_slots): the GPU each slot's child is pinned to, None to leave the device alone (the default: one
    slot). Several slots on one GPU keep it busy where one small run leaves most of it idle. Only one worker
    per store (file lock)."""
    lock = open(_lock_path(store), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another worker is already processing this store", flush=True)
        return 0
    reconcile(store)
    store.clean_staging()
    slots = slots or [None]
    busy: dict[int, _Child] = {}
    started, idle_since = 0, time.monotonic()
    while True:
        for i, child in list(busy.items()):
            if child.poll():
                del busy[i]
                idle_since = time.monotonic()
        free = [i for i in range(len(slots)) if i not in busy]
        while free and (max_jobs is None or started < max_jobs):
            run = store.claim_next(pid=os.getpid())  # the worker owns it until the child reports its pid
            if run is None:
                break
            # the rest of its pack (runs queued to train together) goes to the same child
            i = free.pop(0)
            busy[i] = _Child(store, [r["run_id"] for r in store.claim_pack(run, pid=os.getpid())], slots[i])
            started += 1
            idle_since = time.monotonic()
        if not busy and ((max_jobs is not None and started >= max_jobs)
                         or time.monotonic() - idle_since > idle_exit):
            break
        time.sleep(POLL_SECONDS)
    return 0


class _Child:
    """One training process for a run or a pack of runs, supervised to the end: the process is killed when a
    cancel goes unheeded for CANCEL_GRACE_SECONDS (in a pack: when every run of it asked to stop; a pack
    stops one run at its next flush and trains the others on), and every run it leaves running gets a
    final status. gpu: the one GPU it sees (None: the worker's own devices)."""

    def __init__(self, store: Store, ids: list[str], gpu: str | None = None):
        self.store, self.ids, self.cancel_seen = store, ids, None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(store.log_path(ids[0]), "ab") as log:
            self.proc = subprocess.Popen(child_command(store, ids), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         cwd=str(Path(__file__).resolve().parents[2]))
        for run_id in ids[1:]:  # one process writes one log: every run of the pack shows it, live (a hard link)
            try:
                os.link(store.log_path(ids[0]), store.log_path(run_id))
            except OSError:
                pass
        for run_id in ids:
            store.update(run_id, pid=self.proc.pid, heartbeat=time.time())

    def poll(self) -> bool:
        """True once the process has ended and its runs are settled."""
        store, ids = self.store, self.ids
        code = self.proc.poll()
        if code is None:
            if self.cancel_seen is None and all(store.cancel_requested(r) or store.get(r)["status"] != "running"
                                                for r in ids):
                self.cancel_seen = time.monotonic()
            if self.cancel_seen is None or time.monotonic() - self.cancel_seen <= CANCEL_GRACE_SECONDS:
                return False
            _kill(self.proc)
            code = self.proc.wait()
        self.settle(code)
        return True

    def settle(self, code: int) -> None:
        for run_id in self.ids:
            run = self.store.get(run_id)
            if run and run["status"] == "running":
                # the child died without writing a final status: a crash, a kill or our cancel
                if run.get("cancel_requested"):
                    self.store.transition(run_id, "cancelled", ("running",), finished_at=time.time(),
                                          error="cancelled by the user")
                else:
                    reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    self.store.transition(run_id, "failed", ("running",), finished_at=time.time(),
                                          error=f"the training process {reason} without finishing")
            self.store.discard_staging(run_id)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=3)
    except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def retry(store: Store, run_id: str, owner: str | None = None) -> Submitted:
    """Queue a finished run's spec again, under `submit`'s policy: when an identical run has completed
    (or is queued or running) meanwhile, nothing is queued and `skipped` names that run."""
    run = store.get(run_id)
    if run is None:
        raise ValueError(f"run_id: no run {run_id}")
    if run["status"] in ("queued", "running"):
        raise ValueError(f"run {run_id} is still {run['status']}")
    return submit(store, [run["spec"]], owner=owner or run.get("owner"))
