"""A sweep as a user runs it, packed against one run at a time: the wall-clock time of
`python -m peftcompare sweep ... --pack 4` and of the same sweep without it, each in a fresh store and a process
of its own, so everything a user waits for is in it: loading, tokenizing, training, the dev pass after every
epoch, the final validation pass, adapters saved and records written.

  model   builtin:random-flan-t5-small (exact flan-t5-small shapes, seeded random weights)
  data    the bundled SST-2 sample: 480 training examples, a dev split of 100 carved from the rest, the 200
          validation sentences; 2 epochs, batch 16, precision auto
  sweeps  LoRA r in {4, 8, 16, 32} (one pack of 4); LoRA r=8 with seeds {1, 2, 3} (one pack of 3)
  figures each side --repeats times, the sides alternating; medians and their ratio. The per-run records'
          train and eval seconds are summed too, to show where the time went.

    python bench/bench_sweep.py               # 2 sweeps, 3 repeats (about 15 min on 2 cores)
    python bench/bench_sweep.py --repeats 1

Take figures on an idle machine: another process on the same cores slows both sides, not their ratio alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

SWEEPS = {
    "LoRA r 4/8/16/32": ["--methods", "lora", "--lora_ranks", "4", "8", "16", "32", "--seeds", "42"],
    "LoRA r8 x 3 seeds": ["--methods", "lora", "--lora_ranks", "8", "--seeds", "1", "2", "3"],
}


def sweep_once(args, sweep: list[str], pack: int) -> dict:
    """One sweep in a fresh store: wall seconds, and the runs' recorded train / eval seconds."""
    from peftcompare.service.store import Store

    with tempfile.TemporaryDirectory(prefix="peftcompare-bench-sweep-") as home:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTCOMPARE_HOME": home, "PYTHONPATH": str(C.ROOT)}
        cmd = [sys.executable, "-m", "peftcompare", "sweep", "--model_name", args.model_name, "--dataset", "sst2",
               "--train_file", str(C.SAMPLES / "sst2_train.jsonl"),
               "--validation_file", str(C.SAMPLES / "sst2_validation.jsonl"),
               "--train_samples", "480", "--eval_samples", "200", "--dev_samples", "100",
               "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", "16",
               "--no_zero_shot", *sweep, *(["--pack", str(pack)] if pack > 1 else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=str(C.ROOT), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        runs = Store(Path(home)).list_runs()
        assert runs and all(r["status"] == "completed" for r in runs), [r.get("error") for r in runs]
        packed = {(r.get("fast_paths") or {}).get("packed", {}).get("evaluation") for r in runs}
        return {"wall_s": wall, "runs": len(runs),
                "train_s": sum(r["train_runtime"] or 0 for r in runs),
                "eval_s": sum(r["eval_runtime"] or 0 for r in runs), "evaluation": sorted(map(str, packed))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    p.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 1, 1
    rows, result = [], {}
    for name in args.sweeps:
        alone, packed = [], []
        for _ in range(args.repeats):  # alternate the sides, so a slow minute hits both
            alone.append(sweep_once(args, SWEEPS[name], 1))
            packed.append(sweep_once(args, SWEEPS[name], 4))
        a = statistics.median(r["wall_s"] for r in alone)
        k = statistics.median(r["wall_s"] for r in packed)
        result[name] = {"one_at_a_time_s": a, "packed_s": k, "speedup": a / k, "runs": alone[0]["runs"],
                        "one_at_a_time_runs_train_eval_s": [alone[0]["train_s"], alone[0]["eval_s"]],
                        "packed_pack_train_eval_s": [packed[0]["train_s"] / packed[0]["runs"],
                                                     packed[0]["eval_s"] / packed[0]["runs"]]}
        rows.append([name, alone[0]["runs"], f"{a:.1f}", f"{k:.1f}", f"{a / k:.2f}x",
                     f"{alone[0]['train_s']:.1f} / {alone[0]['eval_s']:.1f}",
                     # every packed run records the pack's time: one run's record is the pack's
                     f"{packed[0]['train_s'] / packed[0]['runs']:.1f} / {packed[0]['eval_s'] / packed[0]['runs']:.1f}"])
        print(f"{name}: done", flush=True)
    print(f"\n`sweep` wall-clock, {args.model_name}, SST-2 sample (480 train, 100 dev, 200 validation), "
          f"{args.epochs} epochs, median of {args.repeats}")
    print(C.fmt_table(rows, ["sweep", "runs", "one at a time s", "--pack 4 s", "speedup",
                             "train / eval s, runs alone (sum)", "train / eval s, the pack"]))
    C.emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
