"""How close the Train page's duration estimate lands on real runs (target: within 30 %).

Each case trains one run through the queue (its own process, like the app), estimates a bigger run from
that measurement with `ui.estimate` (what the page shows), trains the bigger run and prints estimate vs
measured wall time. Run it on an otherwise idle machine: a busy one moves wall times, not the estimate.

    python bench/bench_estimates.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftcompare.service import jobs
from peftcompare.webui import ui  # noqa: E402
from peftcompare.core.spec import RunSpec  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402

TARGET = 0.30
CLS = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=4, train_samples=128, eval_samples=48,
              num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, seed=1)
SUM = RunSpec(model_name="builtin:tiny-t5", task="summarization", method="lora", capacity=8, train_samples=64,
              eval_samples=16, num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, seed=1)
CASES = {  # measured run -> estimated run: more examples, more epochs, another seed
    "classification": (CLS, CLS.replace(train_samples=256, num_train_epochs=3, seed=2)),
    "summarization": (SUM, SUM.replace(train_samples=128, num_train_epochs=3, seed=2)),
}


def run_one(store: Store, spec: RunSpec) -> dict:
    (run_id,) = jobs.submit(store, [spec]).run_ids
    jobs.run_worker(store, idle_exit=0.0, max_jobs=1)
    run = store.get(run_id)
    if run["status"] != "completed":
        raise SystemExit(f"{spec.label()}: {run['status']} ({run.get('error')})")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out, ok = {}, True
    for name, (measured, bigger) in CASES.items():
        with tempfile.TemporaryDirectory() as home:
            store = Store(home)
            run_one(store, measured)
            est = ui.estimate([bigger], store.list_runs(), online=False).seconds
            run = run_one(store, bigger)
            wall = run["finished_at"] - run["started_at"]
        error = (est - wall) / wall
        ok &= abs(error) <= TARGET
        out[name] = {"estimate_s": round(est, 2), "measured_s": round(wall, 2), "error": round(error, 3)}
        print(f"{name:15s} estimate {est:6.1f} s  measured {wall:6.1f} s  error {100 * error:+5.1f} %  "
              f"({'within' if abs(error) <= TARGET else 'OUTSIDE'} ±{100 * TARGET:.0f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
