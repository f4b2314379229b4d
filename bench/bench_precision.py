"""bf16 autocast against fp32 on the tiny model's learning check, several seeds, final metric side by side.

The learning check is tests/test_train.py::test_lora_clearly_learns_the_sample_classification_data:
builtin:tiny-t5, LoRA r=8, all 180 bundled SST-2 training sentences, batch 16, lr 1e-2, 20 epochs,
evaluated on the data it trained on. Each seed runs once per precision through run_training.

Verdict (the issue's rule): auto stays bf16 unless bf16's mean metric falls below fp32's by more than
seed noise (the larger of the two sample standard deviations across seeds, at least 0.01).

    python bench/bench_precision.py [--seeds 1 2 3] [--quick]
"""
from __future__ import annotations

import argparse
import statistics

import _common as C


def run(store, precision: str, seed: int, epochs: int) -> dict:
    from peftcompare.service import execution
    from peftcompare.core.spec import RunSpec

    train_file = str(C.SAMPLES / "sst2_train.jsonl")
    spec = RunSpec(model_name="builtin:tiny-t5", method="lora", capacity=8, num_train_epochs=epochs,
                   learning_rate=1e-2, train_samples=0, eval_samples=0, validation_file=train_file,
                   per_device_train_batch_size=16, per_device_eval_batch_size=8, seed=seed, precision=precision)
    run_id = store.create_run(spec, status="running")
    record = execution.run_training(spec, store, run_id)
    return {"accuracy": record["metrics"]["accuracy"], "f1": record["metrics"]["f1"],
            "train_runtime": record["train_runtime"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="seeds 1 2")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds = [1, 2]
    home = C.tmp_home("bench-precision")
    import contextlib
    import io
    import shutil

    from peftcompare.engine import runtime
    from peftcompare.service.store import Store

    store = Store(home)
    if not runtime.bf16_supported(runtime.device_name()):
        print("bench_precision: this machine has no native bf16, so auto is fp32 here; comparing anyway")
    print(f"bench_precision: builtin:tiny-t5 LoRA r=8, lr 1e-2, {a.epochs} epochs, seeds {a.seeds}", flush=True)
    results = {"fp32": [], "bf16": []}
    try:
        for seed in a.seeds:
            for precision in ("fp32", "bf16"):
                with contextlib.redirect_stdout(io.StringIO()):
                    results[precision].append(run(store, precision, seed, a.epochs))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rows = []
    for i, seed in enumerate(a.seeds):
        f, b = results["fp32"][i], results["bf16"][i]
        rows.append([seed, f"{f['f1']:.3f}", f"{b['f1']:.3f}", f"{f['accuracy']:.3f}", f"{b['accuracy']:.3f}",
                     f"{f['train_runtime']:.1f}", f"{b['train_runtime']:.1f}"])
    mean = {k: statistics.mean(r["f1"] for r in v) for k, v in results.items()}
    sd = {k: statistics.stdev([r["f1"] for r in v]) if len(v) > 1 else 0.0 for k, v in results.items()}
    rows.append(["mean", f"{mean['fp32']:.3f}", f"{mean['bf16']:.3f}",
                 f"{statistics.mean(r['accuracy'] for r in results['fp32']):.3f}",
                 f"{statistics.mean(r['accuracy'] for r in results['bf16']):.3f}", "", ""])
    print(C.fmt_table(rows, ["seed", "f1 fp32", "f1 bf16", "acc fp32", "acc bf16", "train s fp32",
                             "train s bf16"]))
    noise = max(sd["fp32"], sd["bf16"], 0.01)
    verdict = "auto = bf16" if mean["bf16"] >= mean["fp32"] - noise else "auto should be fp32"
    print(f"bf16 - fp32 mean f1: {mean['bf16'] - mean['fp32']:+.3f} (seed noise {noise:.3f}): {verdict}")
    result = {"seeds": a.seeds, "results": results, "mean_f1": mean, "noise": noise, "verdict": verdict}
    C.emit_json(result, a.json)
    return result


if __name__ == "__main__":
    main()
