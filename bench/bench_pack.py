"""Packed training against the same runs one after another: training throughput, FLOP/s against the machine's
peak, and peak memory, for the three sweeps of issue 16, measured side by side in one process.

  model      builtin:random-flan-t5-small (exact flan-t5-small shapes, seeded random weights)
  data       the bundled SST-2 sample (sentences of ~20 tokens, one-token labels), batch 16 per run
  sweeps     LoRA r in {4, 8, 16, 32} (seed 42); prompt tuning with {10, 20, 50, 100} virtual tokens;
             LoRA r=8 with seeds {1, 2, 3}
  sequential each run set up by the training loop itself (train.setup) and stepped by its own step
             (train._step + Progress.account): collation, autocast at the run's precision, fused AdamW,
             clipping, bookkeeping
  packed     the K runs set up as a pack (engine/packing.py) and stepped by the pack's step: one stacked
             forward/backward through the frozen base, each run's optimizer on its own tensors
  figures    each side: --warmup untimed steps, then --steps timed ones; the two sides alternate --repeats
             times and the medians are compared (samples/s = examples of all runs / time). FLOPs are counted
             by torch's FlopCounterMode on one step of each side; memory is the peak resident set while a side
             runs (the process's, sampled every 20 ms).

    python bench/bench_pack.py                 # 3 sweeps, 2 + 6 steps, 3 repeats
    python bench/bench_pack.py --quick         # 1 + 3 steps, 1 repeat
    python bench/bench_pack.py --device cuda   # on a GPU

Take figures on an idle machine: other processes on the same cores change both sides, not their ratio alone.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import _common as C

SWEEPS = {
    "LoRA r 4/8/16/32": [("lora", r, 42) for r in (4, 8, 16, 32)],
    "prompt 10/20/50/100": [("prompt", n, 42) for n in (10, 20, 50, 100)],
    "LoRA r8 x 3 seeds": [("lora", 8, s) for s in (1, 2, 3)],
}


def spec_for(args, method: str, capacity: int, seed: int):
    from peftcompare.core.spec import RunSpec

    return RunSpec(model_name=args.model_name, method=method, capacity=capacity, seed=seed, dataset="sst2",
                   train_file=str(C.SAMPLES / "sst2_train.jsonl"),
                   validation_file=str(C.SAMPLES / "sst2_validation.jsonl"), train_samples=16 * 30,
                   eval_samples=16, num_train_epochs=1, per_device_train_batch_size=16, learning_rate=5e-4,
                   selection="validation", precision=args.precision)


def sequential(args, runs) -> dict:
    """Each run alone, one after another: (seconds per step of all runs, FLOPs of those steps, peak MB)."""
    from peftcompare.engine import train

    times, flops = [], 0
    with C.PeakRSS() as mem:
        for method, capacity, seed in runs:
            s = train.setup(spec_for(args, method, capacity, seed), C.Quiet(f"{method}-{capacity}-{seed}"))
            model, optimizer, scheduler = train._optimizer(s)
            run = train.Progress(s, model, scheduler)
            model.train()
            batches = run.epoch_batches()
            run.begin_epoch()

            def step(i):
                idx = batches[i % len(batches)]
                run.account(idx, train._step(s, model, optimizer, scheduler, idx, run.tally.step), last=False)

            for i in range(args.warmup):
                step(i)
            C.sync(s.device)
            t0 = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                step(i)
            C.sync(s.device)
            times.append((time.perf_counter() - t0) / args.steps)
            flops += C.flops_of(lambda: step(0))
            del s, model, optimizer, run
            gc.collect()
    return {"step_s": sum(times), "flops": flops, "peak_mb": mem.peak, "examples": 16 * len(runs)}


def packed(args, runs) -> dict:
    """The runs as one pack: (seconds per packed step, its FLOPs, peak MB)."""
    from peftcompare.core import methods
    from peftcompare.engine import models, packing, train

    specs = [spec_for(args, m, c, s).resolved() for m, c, s in runs]
    with C.PeakRSS() as mem:
        loaded = models.load_model(specs[0].model_name)
        members = []
        for k, spec in enumerate(specs):
            m = packing._Member(train.open_session(spec, C.Quiet(f"pack-{k}"), loaded=loaded), f"run{k}")
            train.plan_steps(m.s)
            members.append(m)
        pack = packing._Pack(methods.get_method(specs[0].method).pack, loaded, members)
        pack.apply_methods()
        for m in members:
            train.ready(m.s)
            m.model.train()
            m.batches = m.progress.epoch_batches()
            m.progress.begin_epoch()
        n = len(members[0].batches)

        def step(i):
            pack._step(members, i % n, last=False)

        for i in range(args.warmup):
            step(i)
        C.sync(members[0].s.device)
        t0 = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
        C.sync(members[0].s.device)
        per_step = (time.perf_counter() - t0) / args.steps
        flops = C.flops_of(lambda: step(0))
        precision = members[0].s.precision
    del pack, members, loaded
    gc.collect()
    return {"step_s": per_step, "flops": flops, "peak_mb": mem.peak, "examples": 16 * len(runs),
            "precision": precision}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    C.device_arg(p)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.repeats = 1, 3, 1
    device = C.pick_device(args.device)
    rows, result = [], {}
    for name in args.sweeps:
        runs = SWEEPS[name]
        seq, pk = [], []
        for _ in range(args.repeats):  # alternate the sides, so a slow minute hits both
            seq.append(sequential(args, runs))
            pk.append(packed(args, runs))
        s_step = statistics.median(r["step_s"] for r in seq)
        p_step = statistics.median(r["step_s"] for r in pk)
        examples = seq[0]["examples"]
        peak, how = C.peak_for(pk[0]["precision"], device)
        gflops = pk[0]["flops"] / p_step / 1e9
        seq_gflops = seq[0]["flops"] / s_step / 1e9
        result[name] = {"sequential_samples_per_s": examples / s_step, "packed_samples_per_s": examples / p_step,
                        "speedup": s_step / p_step, "packed_gflops": gflops, "sequential_gflops": seq_gflops,
                        "peak_gflops": peak, "precision": pk[0]["precision"],
                        "sequential_peak_mb": max(r["peak_mb"] for r in seq),
                        "packed_peak_mb": max(r["peak_mb"] for r in pk)}
        rows.append([name, f"{examples / s_step:.1f}", f"{examples / p_step:.1f}", f"{s_step / p_step:.2f}x",
                     f"{seq_gflops:.1f} / {gflops:.1f}",
                     f"{100 * gflops / peak:.1f}%" if peak else "—",
                     f"{result[name]['sequential_peak_mb']:.0f} / {result[name]['packed_peak_mb']:.0f}"])
        print(f"{name}: done", flush=True)
    print(f"\n{args.model_name}, {device}, precision {pk[0]['precision']}, {args.warmup} + {args.steps} steps, "
          f"median of {args.repeats}; peak: {how}")
    print(C.fmt_table(rows, ["sweep", "sequential samples/s", "packed samples/s", "speedup",
                             "GFLOP/s seq / packed", "packed % of peak", "peak MB seq / packed"]))
    C.emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
