"""The PEFT zoo side by side: training samples/s and peak memory of every method on flan-t5-small shapes.

One process, one method after another, each on a fresh copy of the same model and the same batches:
  model      builtin:random-flan-t5-small (exact flan-t5-small shapes, seeded random weights)
  method     each registered PEFT method at its zoo budget (about 300k trainable parameters, methods.zoo_budget;
             LoRA at r=8 as the reference), applied by the training loop's own prepare_model on q and v
  step       the training loop's step: the family's collation, autocast at the run's precision (auto), AdamW
             (fused), gradient clipping; frozen linears cast as a run casts them
  data       the bundled SST-2 sample, --batch sentences per step, the same batches for every method
  figures    median step time over --steps timed steps (after --warmup untimed ones) -> samples/s; peak memory
             of training beyond the loaded model (GPU: max allocated minus the model's; CPU: each method in
             its own process, the resident set sampled during the steps minus the set with the model loaded)

    python bench/bench_zoo.py                          # every zoo method, 2 + 5 steps, batch 16
    python bench/bench_zoo.py --quick                  # LoRA, DoRA, OFT, FourierFT, LN tuning: 1 + 2 steps
    python bench/bench_zoo.py --methods lora vera --steps 10

Figures taken while other processes share the CPU are not comparable between runs; compare rows of one run.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import _common as C

QUICK = ("lora", "dora", "oft", "fourierft", "ln_tuning")


def parse(argv=None):
    from peftcompare.core import methods

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=None, help="methods to time (default: LoRA and every zoo "
                   "method)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)}; --warmup 1 --steps 2")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one method, figures as JSON on stdout
    C.device_arg(p)
    a = p.parse_args(argv)
    if a.quick:
        a.methods, a.warmup, a.steps = a.methods or list(QUICK), 1, 2
    a.methods = a.methods or ["lora", *methods.zoo_budget()]
    for name in a.methods:
        methods.get_method(name)  # unknown or refused: one line
    return a


def batches(loaded, n: int, size: int) -> list[dict]:
    from peftcompare.core.spec import RunSpec

    spec = RunSpec(model_name=loaded.name).resolved()
    rows = C.repeated(C.read_jsonl(C.SAMPLES / "sst2_train.jsonl"), n * size)
    words = ["negative", "positive"]
    feats = loaded.family.encode([spec.prompt_template.replace("{text}", r["sentence"]) for r in rows],
                                 [words[int(r["label"])] for r in rows], loaded.tokenizer,
                                 spec.max_source_length, spec.max_target_length)
    return [loaded.family.collate(feats[i * size:(i + 1) * size], loaded.tokenizer) for i in range(n)]


def capacity(name: str) -> int:
    from peftcompare.core import methods

    m = methods.get_method(name)
    return (methods.zoo_budget().get(name) or (8 if name == "lora" else m.capacities[0])) if m.capacity_name else 8


def time_method(name: str, a, device: str) -> dict:
    import torch

    from peftcompare.core.spec import RunSpec
    from peftcompare.engine import evaluate as eval_mod
    from peftcompare.engine import models, runtime, train

    gc.collect()
    precision, dtype = runtime.resolve_precision(a.precision, device)
    spec = RunSpec(model_name=a.model_name, method=name, capacity=capacity(name)).resolved()
    loaded = models.load_model(a.model_name)
    gc.collect()
    rss0 = C.rss_mb()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    model = train.prepare_model(spec, loaded, total_steps=a.warmup + a.steps)
    setup_s = time.perf_counter() - t0
    trainable, _ = models.count_parameters(model)
    model.to(device)
    held = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    if dtype is not None:
        train.cast_frozen_linears(model, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, fused=True)
    data = [{k: v.to(device) for k, v in b.items()} for b in batches(loaded, a.warmup + a.steps, a.batch)]
    model.train()

    def step(batch):
        with eval_mod.autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in data[: a.warmup]:
        step(b)
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with C.PeakRSS() as rss:
        for b in data[a.warmup:]:
            C.sync(device)
            t = time.perf_counter()
            step(b)
            C.sync(device)
            times.append(time.perf_counter() - t)
    peak = ((torch.cuda.max_memory_allocated() - held) / 2**20 if device.startswith("cuda") else rss.peak - rss0)
    med = statistics.median(times)
    out = {"method": name, "capacity": spec.capacity if spec.capacity else None, "trainable_params": trainable,
           "setup_s": round(setup_s, 2), "step_ms": round(med * 1000, 1),
           "samples_per_s": round(a.batch / med, 1), "peak_mb": round(peak, 1), "precision": precision}
    return out


def one(name: str, a, device: str) -> dict:
    try:
        return time_method(name, a, device)
    except (ValueError, RuntimeError, TypeError) as exc:  # a method this model cannot take: say so, go on
        return {"method": name, "error": str(exc).splitlines()[0][:160]}


def isolated(name: str, a, device: str, argv: list[str]) -> dict:
    """One method in a fresh process: a CPU allocator that never hands memory back would otherwise let the
    first method's peak hide every later one's."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", name, "--device", device],
                          capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"method": name, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    device = C.pick_device(a.device)
    if a.child:
        print(json.dumps(one(a.child, a, device)))
        return
    parent = [x for x in argv if x != "--quick"] + (["--warmup", str(a.warmup), "--steps", str(a.steps)] if a.quick
                                                     else [])
    results = []
    for name in a.methods:
        results.append(one(name, a, device) if device.startswith("cuda") else isolated(name, a, device, parent))
        r = results[-1]
        print(f"  {name}: " + (r.get("error") or f"{r['samples_per_s']} samples/s, {r['peak_mb']} MB"), flush=True)
    lora = next((r for r in results if r["method"] == "lora" and "error" not in r), None)
    rows = [[r["method"], r.get("capacity") or "-", f"{r['trainable_params']:,}", r["step_ms"], r["samples_per_s"],
             f"{r['samples_per_s'] / lora['samples_per_s']:.2f}" if lora else "-", r["peak_mb"], r["setup_s"]]
            for r in results if "error" not in r]
    print(f"\n{a.model_name} on {device}, batch {a.batch}, median of {a.steps} steps after {a.warmup} "
          f"({results[0].get('precision', a.precision) if results else a.precision}):")
    print(C.fmt_table(rows, ["method", "capacity", "trainable", "step ms", "samples/s", "vs LoRA", "peak MB",
                             "setup s"]))
    for r in results:
        if "error" in r:
            print(f"{r['method']}: not timed ({r['error']})")
    C.emit_json({"model": a.model_name, "device": device, "batch": a.batch, "steps": a.steps,
                 "results": results}, a.json)


if __name__ == "__main__":
    main()
