"""Data-parallel training: two real CPU processes launched by accelerate, one run record.

On CPU, `accelerate launch --num_processes 2 --cpu` starts N processes only through mpirun (with
--mpirun_hostfile); without MPI it starts one. `--multi_gpu` uses torchrun, which works on a CPU-only
machine too: each process gets an Accelerator on "cpu:0" with a gloo process group.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from peftcompare.engine import adapters
from peftcompare.engine import compare as infer
from peftcompare.service.store import Store

ARGS = ["train", "--model_name", "builtin:tiny-t5", "--method", "lora", "--capacity", "4", "--num_train_epochs",
        "1", "--train_samples", "32", "--eval_samples", "8", "--per_device_train_batch_size", "8", "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTCOMPARE_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    home = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "peftcompare", *ARGS]
    proc = subprocess.run(cmd, env=_env(home), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Store(home), proc


def test_two_processes_write_one_data_parallel_record(launched):
    store, proc = launched
    runs = store.list_runs()
    assert len(runs) == 1, "each process must not create its own run"
    run = runs[0]
    assert run["status"] == "completed" and run["error"] is None
    assert run["world_size"] == 2
    fast = run["fast_paths"]
    assert fast["world_size"] == 2
    assert fast["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores are shared out
    assert fast["flush_denormal"] is True
    # 32 examples in batches of 8 = 4 batches, 2 per process: each optimizer step sees 2 x 8 examples
    assert run["total_steps"] == 2 and run["step"] == 2
    assert [s["step"] for s in store.steps(run["run_id"])] == [1, 2]
    assert run["train_samples_per_second"] > 0 and run["metrics"]["eval_samples"] == 8
    assert proc.stdout.count("done:") == 1, "only the main process reports"


def test_data_parallel_adapter_loads_and_answers(launched):
    store, _ = launched
    run = store.list_runs()[0]
    rec = adapters.read_adapter(store.adapter_path(run["run_id"]))
    assert rec["fast_paths"]["world_size"] == 2
    out = infer.CompareEngine(store, device="cpu", precision="fp32").compare("a fine film", [run["run_id"]])
    assert {c["key"] for c in out["columns"]} == {infer.BASE, run["run_id"]}


def test_single_process_record_of_the_same_spec_differs_only_in_world_size(launched, tmp_path):
    store, _ = launched
    proc = subprocess.run([sys.executable, "-m", "peftcompare", *ARGS], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = Store(tmp_path).list_runs()[0]
    multi = store.list_runs()[0]
    assert single["world_size"] == 1 and single["total_steps"] == 4
    assert set(single["fast_paths"]) == set(multi["fast_paths"])
    assert single["spec"] == multi["spec"]
