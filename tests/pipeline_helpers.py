"""Shared helpers of the pipeline tests: tiny budgets on the built-in model, a run through the real entry point."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from peftcompare.service import execution
from peftcompare.core.spec import RunSpec
from peftcompare.service.store import Store

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "peftcompare" / "samples"


def tiny_spec(**overrides) -> RunSpec:
    base = dict(model_name="builtin:tiny-t5", train_samples=32, eval_samples=8, num_train_epochs=1,
                per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=5e-3,
                dev_samples=16)  # a dev split of 16: selection works as in a real run, scored in a blink
    if overrides.get("task") == "summarization":
        base.update(max_source_length=128, max_target_length=16, train_samples=16, eval_samples=4)
    base.update(overrides)
    return RunSpec(**base)


def run_in_process(store: Store, spec: RunSpec) -> dict:
    run_id = store.create_run(spec, status="running")
    code = execution.execute(spec, store, run_id)
    run = store.get(run_id)
    assert code == 0, run.get("error")
    return run


def cli(*args: str, home: Path, check: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTCOMPARE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "peftcompare", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc
