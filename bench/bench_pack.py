"""Packed training against the same runs one after another: training throughput, FLOP/s against the machine's
peak, and peak memory, for the three sweeps of issue 16 and prompt- and prefix-tuning seed sweeps, measured side
by side in one process; and the packed evaluation passes against each run's own.

  model      builtin:random-flan-t5-small (exact flan-t5-small shapes, seeded random weights)
  data       the bundled SST-2 sample (sentences of ~20 tokens, one-token labels), batch 16 per run
  sweeps     LoRA r in {4, 8, 16, 32} (seed 42); prompt tuning with {10, 20, 50, 100} virtual tokens;
             LoRA r=8 with seeds {1, 2, 3}; prompt and prefix tuning with 20 tokens and seeds {1, 2, 3}
  sequential each run set up by the training loop itself (train.setup) and stepped by its own step
             (train._step + Progress.account): collation, autocast at the run's precision, fused AdamW,
             clipping, bookkeeping
  packed     the runs as `sweep --pack K` trains them (core/packs.plan_packs; "trainings" counts the packs and
             the runs left alone): a pack set up as engine/packing.py sets it up and stepped by the pack's step,
             one stacked forward/backward through the frozen base, each run's optimizer on its own tensors.
             Prompts of different lengths do not pack; that sweep is also measured forced into one pack
             (every row's prompt padded to the longest) to show why
  figures    each side: --warmup untimed steps, then --steps timed ones; the two sides alternate --repeats
             times and the medians are compared (samples/s = examples of all runs / time). FLOPs are counted
             by torch's FlopCounterMode on one step of each side; memory is the peak resident set while a side
             runs (the process's, sampled every 20 ms); on a GPU, how busy it was (nvidia-smi, every 100 ms).
  evaluation the packs' selection pass (the SST-2 label scoring of --eval_examples examples per run, batch 16)
             against each run's own pass on the same adapters, and the same for summarization (greedy generation
             of up to 32 tokens on SAMSum-style dialogues) for the LoRA rank sweep; medians of --repeats,
             alternating

    python bench/bench_pack.py                 # 5 sweeps (+1 forced), 2 + 6 steps, 3 repeats; 5 evaluation passes
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
    "prompt 20 x 3 seeds": [("prompt", 20, s) for s in (1, 2, 3)],
    "prefix 20 x 3 seeds": [("prefix", 20, s) for s in (1, 2, 3)],
}
# the packed side trains what the planner packs (core/packs.plan_packs: prompts of different lengths train
# alone); these sweeps are also measured forced into one pack, to show why the planner refuses it
FORCED = ("prompt 10/20/50/100",)


def spec_for(args, method: str, capacity: int, seed: int, task: str = "classification", eval_samples: int = 16):
    from peftcompare.core.spec import RunSpec

    data = "sst2" if task == "classification" else "samsum"
    return RunSpec(model_name=args.model_name, method=method, capacity=capacity, seed=seed, dataset=data, task=task,
                   train_file=str(C.SAMPLES / f"{data}_train.jsonl"),
                   validation_file=str(C.SAMPLES / f"{data}_validation.jsonl"), train_samples=16 * 30,
                   eval_samples=eval_samples, num_train_epochs=1, per_device_train_batch_size=16,
                   per_device_eval_batch_size=16, learning_rate=5e-4, selection="validation",
                   max_target_length=32, precision=args.precision)


def sequential(args, runs) -> dict:
    """Each run alone, one after another: (seconds per step of all runs, FLOPs of those steps, peak MB)."""
    from peftcompare.engine import train

    times, flops, precision = [], 0, None
    with C.PeakRSS() as mem, C.GpuBusy(args.device_name) as busy:
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
            precision = s.precision
            del s, model, optimizer, run
            gc.collect()
    return {"step_s": sum(times), "flops": flops, "peak_mb": mem.peak, "examples": 16 * len(runs),
            "precision": precision, "gpu_busy": busy.mean}


def planned(args, runs, forced: bool = False) -> dict:
    """The runs as `sweep --pack K` trains them: packs as planned, a run without a partner alone."""
    from peftcompare.core import packs

    if forced:
        return packed(args, runs)
    specs = [spec_for(args, *r) for r in runs]
    groups = packs.plan_packs(specs, len(runs))
    parts = [packed(args, [(s.method, s.capacity, s.seed) for s in g]) if len(g) > 1 else
             sequential(args, [(g[0].method, g[0].capacity, g[0].seed)]) for g in groups]
    return {"step_s": sum(p["step_s"] for p in parts), "flops": sum(p["flops"] for p in parts),
            "peak_mb": max(p["peak_mb"] for p in parts), "examples": 16 * len(runs),
            "precision": parts[0]["precision"], "packs": len(groups),
            "gpu_busy": max((p["gpu_busy"] for p in parts if p["gpu_busy"] is not None), default=None)}


def packed(args, runs) -> dict:
    """The runs as one pack: (seconds per packed step, its FLOPs, peak MB)."""
    from peftcompare.engine import models

    specs = [spec_for(args, m, c, s).resolved() for m, c, s in runs]
    with C.PeakRSS() as mem, C.GpuBusy(args.device_name) as busy:
        loaded = models.load_model(specs[0].model_name)
        pack, members = C.start_pack(specs, loaded)
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
            "precision": precision, "gpu_busy": busy.mean}


# the evaluation passes measured: (sweep, task)
EVAL_CASES = (("LoRA r 4/8/16/32", "classification"), ("LoRA r8 x 3 seeds", "classification"),
              ("prompt 20 x 3 seeds", "classification"), ("prefix 20 x 3 seeds", "classification"),
              ("LoRA r 4/8/16/32", "summarization"))


def evaluation(args, runs, task: str) -> dict:
    """One selection pass of every run of a pack: packed (one stacked forward per batch, engine/packing.py) and
    each run alone on the same adapters, alternating; medians of --repeats."""
    from peftcompare.engine import models, packing

    n = args.eval_examples if task == "classification" else max(16, args.eval_examples // 4)
    specs = [spec_for(args, m, c, s, task, eval_samples=n).resolved() for m, c, s in runs]
    loaded = models.load_model(specs[0].model_name)
    pack, members = C.start_pack(specs, loaded, tag="eval")
    for m in members:
        m.model.eval()

    def alone():
        for m in members:
            with pack._alone(m):
                m.progress.selection_pass()

    def packed():
        pack._selection_pass(members, packing._PackRows(pack, members))

    times = {"alone": [], "packed": []}
    for side in (alone, packed):  # a warm-up pass of each
        side()
    for _ in range(args.repeats):
        for name, side in (("alone", alone), ("packed", packed)):
            C.sync(members[0].s.device)
            t0 = time.perf_counter()
            side()
            C.sync(members[0].s.device)
            times[name].append(time.perf_counter() - t0)
    examples = n * len(runs)
    a, p = statistics.median(times["alone"]), statistics.median(times["packed"])
    del pack, members, loaded
    gc.collect()
    return {"examples": examples, "alone_s": a, "packed_s": p, "alone_per_s": examples / a,
            "packed_per_s": examples / p, "speedup": a / p}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    p.add_argument("--eval_examples", type=int, default=128, help="examples per run in the evaluation passes "
                   "(SST-2; summarization a quarter of it, at least 16)")
    p.add_argument("--no_eval", action="store_true", help="measure training only")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    C.device_arg(p)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.repeats, args.eval_examples = 1, 3, 1, 32
    device = args.device_name = C.pick_device(args.device)
    rows, result = [], {}
    cases = [(n, False) for n in args.sweeps] + [(n, True) for n in args.sweeps if n in FORCED]
    for name, forced in cases:
        runs = SWEEPS[name]
        label = f"{name}, one pack (padded)" if forced else name
        seq, pk = [], []
        for _ in range(args.repeats):  # alternate the sides, so a slow minute hits both
            seq.append(sequential(args, runs))
            pk.append(planned(args, runs, forced))
        s_step = statistics.median(r["step_s"] for r in seq)
        p_step = statistics.median(r["step_s"] for r in pk)
        examples = seq[0]["examples"]
        peak, how = C.peak_for(pk[0]["precision"], device)
        gflops = pk[0]["flops"] / p_step / 1e9
        seq_gflops = seq[0]["flops"] / s_step / 1e9
        n_packs = pk[0].get("packs", 1)
        result[label] = {"sequential_samples_per_s": examples / s_step, "packed_samples_per_s": examples / p_step,
                         "speedup": s_step / p_step, "packed_gflops": gflops, "sequential_gflops": seq_gflops,
                         "peak_gflops": peak, "precision": pk[0]["precision"], "trainings": n_packs,
                         "sequential_flops_per_step": seq[0]["flops"], "packed_flops_per_step": pk[0]["flops"],
                         "sequential_peak_mb": max(r["peak_mb"] for r in seq),
                         "packed_peak_mb": max(r["peak_mb"] for r in pk),
                         "sequential_gpu_busy_pct": seq[0]["gpu_busy"], "packed_gpu_busy_pct": pk[0]["gpu_busy"]}
        rows.append([label, f"{n_packs} of {len(runs)}", f"{examples / s_step:.1f}", f"{examples / p_step:.1f}",
                     f"{s_step / p_step:.2f}x", f"{seq_gflops:.1f} / {gflops:.1f}",
                     f"{pk[0]['flops'] / seq[0]['flops']:.2f}",
                     f"{100 * gflops / peak:.1f}%" if peak else "—",
                     f"{result[label]['sequential_peak_mb']:.0f} / {result[label]['packed_peak_mb']:.0f}"]
                    + ([_pct(seq[0]["gpu_busy"]) + " / " + _pct(pk[0]["gpu_busy"])] if device != "cpu" else []))
        print(f"{label}: done", flush=True)
    print(f"\n{args.model_name}, {device}, precision {pk[0]['precision']}, {args.warmup} + {args.steps} steps, "
          f"median of {args.repeats}; peak: {how}")
    print(C.fmt_table(rows, ["sweep", "trainings", "sequential samples/s", "packed samples/s", "speedup",
                             "GFLOP/s seq / packed", "FLOPs packed/seq", "packed % of peak",
                             "peak MB seq / packed"] + (["GPU busy % seq / packed"] if device != "cpu" else [])))
    if not args.no_eval:
        eval_rows = []
        for name, task in EVAL_CASES:
            if name not in args.sweeps:
                continue
            r = evaluation(args, SWEEPS[name], task)
            result[f"evaluation: {name}, {task}"] = r
            eval_rows.append([name, "SST-2 label scoring" if task == "classification" else "SAMSum generation",
                              r["examples"], f"{r['alone_per_s']:.1f}", f"{r['packed_per_s']:.1f}",
                              f"{r['speedup']:.2f}x"])
            print(f"evaluation {name} {task}: done", flush=True)
        print(f"\nevaluation passes (selection split), median of {args.repeats}")
        print(C.fmt_table(eval_rows, ["sweep", "pass", "examples (all runs)", "alone examples/s",
                                      "packed examples/s", "speedup"]))
    C.emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
