"""The queue worker with several slots (`worker --per_gpu N`): runs train at the same time, each in its own
supervised process pinned to its slot's GPU, and every one ends with its final status."""
from __future__ import annotations

import json
import sys

import pytest

from peftcompare.service import jobs
from peftcompare.service.store import Store
from pipeline_helpers import cli, tiny_spec

# the worker's real child command, run by a wrapper that first notes when it ran and which GPU it was given
WRAPPER = r'''
import json, os, subprocess, sys, time
note, real = sys.argv[1], sys.argv[2:]
t0 = time.time()
code = subprocess.call(real)
with open(note, "a") as f:
    f.write(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": t0, "end": time.time()}) + "\n")
sys.exit(code)
'''


def test_worker_slots_pin_each_child_to_one_gpu():
    assert jobs.worker_slots(2, ["0", "1"]) == ["0", "0", "1", "1"]
    assert jobs.worker_slots(1, ["3"]) == ["3"]
    assert jobs.worker_slots(4, []) == [None]  # no GPU: one run at a time, with every core
    with pytest.raises(ValueError, match="per_gpu"):
        jobs.worker_slots(0, ["0"])


def test_a_worker_with_two_slots_trains_two_runs_at_once(tmp_path, monkeypatch):
    store = Store(tmp_path / "home")
    note = tmp_path / "children.jsonl"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    real = jobs.child_command
    monkeypatch.setattr(jobs, "child_command",
                        lambda store_, ids: [sys.executable, str(wrapper), str(note), *real(store_, ids)])
    # slot ids as CUDA_VISIBLE_DEVICES names GPUs; "" shows the child none, so on this CPU machine it trains on
    # the CPU all the same
    specs = [tiny_spec(method="lora", capacity=c, seed=1, num_train_epochs=2) for c in (4, 8)] + \
        [tiny_spec(method="ia3", seed=1)]
    out = jobs.submit(store, specs)
    assert jobs.run_worker(store, idle_exit=0, slots=["", " "]) == 0
    runs = [store.get(r) for r in out.run_ids]
    assert [r["status"] for r in runs] == ["completed"] * 3, [r["error"] for r in runs]
    children = [json.loads(line) for line in note.read_text().splitlines()]
    assert len(children) == 3 and {c["gpu"] for c in children} == {"", " "}
    first, second = sorted(children, key=lambda c: c["start"])[:2]
    assert second["start"] < first["end"]  # the first two trained at the same time
    assert len({r["pid"] for r in runs}) == 3  # a process each


def test_worker_per_gpu_on_the_command_line(tmp_path):
    home = tmp_path / "home"
    bad = cli("worker", "--per_gpu", "0", home=home)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "per_gpu" in bad.stderr
    assert "Traceback" not in bad.stderr
    done = cli("worker", "--per_gpu", "2", "--idle_exit", "0", home=home, check=True)
    assert "no GPU here: the worker trains one run at a time" in done.stdout
