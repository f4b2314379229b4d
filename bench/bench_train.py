"""Training and SST-2 evaluation throughput: peftcompare against the common Seq2SeqTrainer recipe.

Both sides in one process, one after the other, on the same data and budget:
  model      builtin:random-flan-t5-small (exact flan-t5-small shapes, untied lm_head, 76,961,152 params),
             a fresh copy for each side
  method     LoRA on q,v, r=8, alpha 16, dropout 0.05, AdamW lr 5e-4, batch 16
  data       the bundled SST-2 sample, cycled to (warmup + steps) x 16 training sentences and
             --eval_examples validation sentences (872 = the real SST-2 validation size)
  budget     --warmup steps (not timed) then --steps timed steps
reference   Seq2SeqTrainer as commonly written: inputs padded to 256 and labels to 8 at tokenization
            (pad -> -100), fp32, evaluation by free generation (predict_with_generate, up to 8 tokens)
            over the whole validation set. Denormals flushed and the same thread count: not handicapped.
peftcompare run_training (the real entry point: dynamic padding, length-grouped batches, precision auto,
            ...), timed per step through its progress hook; evaluation by evaluate.evaluate (label
            scoring in one forward pass), as run_training does after every epoch.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the exact timed batches (forward +
backward, matmuls), and compared with the machine's theoretical peak (see _common.cpu_peak).

    python bench/bench_train.py                  # 2 + 12 steps, 872 eval sentences
    python bench/bench_train.py --quick          # 1 + 4 steps, 64 eval sentences (2-core: ~2 min)
"""
from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import _common as C

BATCH = 16


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12, help="timed training steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--eval_examples", type=int, default=872, help="validation sentences (872 = SST-2)")
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--quick", action="store_true", help="--steps 4 --warmup 1 --eval_examples 64")
    p.add_argument("--skip_reference", action="store_true", help="only peftcompare (no ratio)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    C.device_arg(p)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.warmup, a.eval_examples = 4, 1, 64
    return a


def make_data(home: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    train = C.repeated(C.read_jsonl(C.SAMPLES / "sst2_train.jsonl"), n_train)
    val = C.repeated(C.read_jsonl(C.SAMPLES / "sst2_validation.jsonl"), n_eval)
    return (C.write_jsonl(train, home / "train.jsonl"), C.write_jsonl(val, home / "validation.jsonl"))


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q", "v"])


# -- the reference recipe ---------------------------------------------------------------------------
def reference(args, train_file: Path, val_file: Path, home: Path, device: str) -> dict:
    try:
        import datasets
    except ImportError:
        datasets = None
    import torch
    from peft import get_peft_model
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from peftcompare.engine import models

    torch.set_flush_denormal(True)
    loaded = models.load_model(args.model_name, fast_kernels=False)  # transformers as shipped
    tok = loaded.tokenizer
    model = get_peft_model(loaded.model, lora_config())
    words = ("negative", "positive")

    def preprocess(batch):
        enc = tok(["sst2: " + s for s in batch["sentence"]], max_length=256, padding="max_length",
                  truncation=True)
        lab = tok(text_target=[words[int(l)] for l in batch["label"]], max_length=8, padding="max_length",
                  truncation=True)
        enc["labels"] = [[t if t != tok.pad_token_id else -100 for t in row] for row in lab["input_ids"]]
        return enc

    def load(path):
        rows = C.read_jsonl(path)
        if datasets is None:  # a GPU image without `datasets`: the same features as a plain list
            enc = preprocess({k: [r[k] for r in rows] for k in ("sentence", "label")})
            return [{k: enc[k][i] for k in enc} for i in range(len(rows))]
        ds = datasets.Dataset.from_list(rows)
        return ds.map(preprocess, batched=True, remove_columns=ds.column_names)

    train_ds, val_ds = load(train_file), load(val_file)

    def compute_metrics(pred):
        preds = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = [[t for t in row if t >= 0] for row in preds]
        labels = [[t for t in row if t >= 0] for row in pred.label_ids]
        p = tok.batch_decode(preds, skip_special_tokens=True)
        r = tok.batch_decode(labels, skip_special_tokens=True)
        return {"accuracy": sum(a.strip() == b.strip() for a, b in zip(p, r)) / max(1, len(r))}

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            C.sync(device)
            stamps.append(time.perf_counter())

    targs = Seq2SeqTrainingArguments(
        output_dir=str(home / "trainer"), per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
        learning_rate=5e-4, max_steps=args.warmup + args.steps, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to=[], predict_with_generate=True, generation_max_length=8,
        use_cpu=not device.startswith("cuda"), dataloader_num_workers=0, disable_tqdm=True, seed=42)
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=train_ds, processing_class=tok,
                             compute_metrics=compute_metrics, callbacks=[Stamp()])
    out = {}
    with C.PeakRSS() as mem:
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    timed = stamps[-1] - stamps[args.warmup - 1] if args.warmup else stamps[-1] - t0
    out["train_seconds"] = timed
    out["train_examples_per_s"] = args.steps * BATCH / timed
    out["train_total_seconds"] = total
    out["train_peak_rss_mb"] = mem.peak
    out["train_tokens_per_step"] = BATCH * (256 + 8)

    # FLOPs of one step (every batch has the same padded shape)
    batch = trainer.data_collator([train_ds[i] for i in range(BATCH)])
    batch = {k: v.to(model.device) for k, v in batch.items()}

    def step():
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    out["train_flops"] = C.flops_of(step) * args.steps

    trainer.evaluate(eval_dataset=val_ds[:BATCH] if isinstance(val_ds, list) else
                     val_ds.select(range(min(BATCH, len(val_ds)))))  # warm-up
    with C.PeakRSS() as mem, C.timed(out, "eval_seconds", device):
        metrics = trainer.evaluate(eval_dataset=val_ds)
    out["eval_examples_per_s"] = len(val_ds) / out["eval_seconds"]
    out["eval_peak_rss_mb"] = mem.peak
    out["eval_accuracy"] = metrics.get("eval_accuracy")
    out["precision"] = "fp32"
    del trainer, model, loaded
    return out


# -- peftcompare ------------------------------------------------------------------------------------
def peftcompare_side(args, train_file: Path, val_file: Path, home: Path, device: str) -> dict:
    import torch

    from peftcompare.engine import data as data_mod
    from peftcompare.engine import evaluate as eval_mod
    from peftcompare.engine import models, runtime, train
    from peftcompare.core.spec import RunSpec
    from peftcompare.service.store import Store
    from peftcompare.service import execution

    n_train = (args.warmup + args.steps) * BATCH
    spec = RunSpec(model_name=args.model_name, method="lora", capacity=8, dataset="sst2",
                   train_file=str(train_file), validation_file=str(val_file), train_samples=n_train,
                   eval_samples=BATCH, num_train_epochs=1, per_device_train_batch_size=BATCH,
                   per_device_eval_batch_size=BATCH, learning_rate=5e-4, seed=42).resolved()
    store = Store(home / "store")
    run_id = store.create_run(spec, status="running")
    stamps: list[float] = []

    def progress(step, total, loss):
        C.sync(device)
        stamps.append(time.perf_counter())

    with C.PeakRSS() as mem:
        t0 = time.perf_counter()
        record = execution.run_training(spec, store, run_id, progress)
        total = time.perf_counter() - t0
    out = {"train_seconds": stamps[-1] - stamps[args.warmup - 1] if args.warmup else stamps[-1] - t0}
    out["train_examples_per_s"] = args.steps * BATCH / out["train_seconds"]
    out["train_total_seconds"] = total
    out["train_peak_rss_mb"] = mem.peak
    out["precision"] = record["precision"]
    out["fast_paths"] = store.get(run_id).get("fast_paths_json") or record["fast_paths"]

    # the exact batches the run trained on (same seed, same grouping), for FLOPs and tokens
    _, dtype = runtime.resolve_precision(spec.precision, device)
    loaded = models.load_model(spec.model_name)
    task_data = data_mod.load_task_data(spec)
    feats = data_mod.tokenized(spec, loaded.family, loaded.tokenizer, task_data.train, True)
    lengths = [len(f["input_ids"]) + len(f["labels"]) for f in feats]
    batches = data_mod.length_grouped_batches(lengths, BATCH, spec.seed)[args.warmup:args.warmup + args.steps]
    model = train.prepare_model(spec, loaded).to(device)
    model.train()
    flops, tokens = 0, 0
    for idx in batches:
        batch = {k: v.to(device) for k, v in loaded.family.collate([feats[i] for i in idx],
                                                                      loaded.tokenizer).items()}
        tokens += batch["input_ids"].numel() + batch["labels"].numel()

        def step():
            with eval_mod.autocast(device, dtype):
                loss = model(**batch).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        flops += C.flops_of(step)
    out["train_flops"] = flops
    out["train_tokens_per_step"] = tokens / max(1, len(batches))

    # evaluation: the function run_training calls after every epoch, on the trained adapter
    from peft import PeftModel

    eval_spec = spec.replace(eval_samples=0)
    task_data = data_mod.load_task_data(eval_spec)
    base = models.load_model(spec.model_name)
    model = PeftModel.from_pretrained(base.model, store.adapter_path(run_id)).to(device).eval()
    eval_feats = data_mod.tokenized(eval_spec, base.family, base.tokenizer, task_data.validation, False)

    def evaluate(n=None):
        ex, fe = task_data.validation[:n], eval_feats[:n]
        return eval_mod.evaluate(model, base.family, base.tokenizer, eval_spec, ex, fe, task_data.label_words,
                                 device, dtype)

    evaluate(BATCH)  # warm-up (kernel selection)
    with C.PeakRSS() as mem, C.timed(out, "eval_seconds", device):
        metrics = evaluate()
    out["eval_examples_per_s"] = len(eval_feats) / out["eval_seconds"]
    out["eval_peak_rss_mb"] = mem.peak
    out["eval_accuracy"] = metrics["accuracy"]
    del model, base, loaded
    torch.manual_seed(0)
    return out


def gflops(side: dict) -> float:
    return side["train_flops"] / side["train_seconds"] / 1e9


def main(argv=None) -> dict:
    args = parse(argv)
    device = C.pick_device(args.device)
    home = C.tmp_home("bench-train")
    try:
        from peftcompare.engine import runtime

        if device == "cpu":
            runtime.configure_cpu()  # the same threads and denormal flushing for both sides
        n_train = (args.warmup + args.steps) * BATCH
        train_file, val_file = make_data(home, n_train, args.eval_examples)
        print(f"bench_train: {args.model_name}, LoRA q,v r=8, batch {BATCH}, {args.warmup} warm-up + "
              f"{args.steps} timed steps, {args.eval_examples} SST-2 eval sentences, device {device}, "
              f"{runtime.usable_cores()} cores ({runtime.cpu_model()})", flush=True)
        ours = peftcompare_side(args, train_file, val_file, home, device)
        print(f"  peftcompare done ({ours['train_total_seconds']:.1f} s training incl. load)", flush=True)
        ref = None if args.skip_reference else reference(args, train_file, val_file, home, device)
        result = report(args, device, ours, ref)
        C.emit_json(result, args.json)
        return result
    finally:
        shutil.rmtree(home, ignore_errors=True)


def report(args, device, ours, ref) -> dict:
    peak_fp32, how = C.peak_for("fp32", device)
    peak_bf16, _ = C.peak_for("bf16", device)
    peaks = {"fp32": peak_fp32, "bf16": peak_bf16}
    full_peak = C.cpu_peak() if device == "cpu" else C.gpu_peak()
    rows = []
    for name, side in (("reference (Seq2SeqTrainer)", ref), ("peftcompare", ours)):
        if side is None:
            continue
        g = gflops(side)
        peak = peaks.get(side["precision"]) or float("nan")
        rows.append([name, side["precision"], f"{side['train_examples_per_s']:.2f}",
                     f"{side['train_seconds'] / args.steps:.3f}", f"{side['train_tokens_per_step']:.0f}",
                     f"{g:.1f}", f"{100 * g / peak:.1f}%" if peak == peak else "n/a",
                     f"{side['eval_examples_per_s']:.2f}", f"{side['train_peak_rss_mb']:.0f}",
                     f"{side['eval_peak_rss_mb']:.0f}"])
    print(C.fmt_table(rows, ["side", "precision", "train ex/s", "s/step", "tokens/step", "GFLOP/s",
                             "of peak", "eval ex/s", "train RSS MB", "eval RSS MB"]))
    print(f"peak: {how}: fp32 {peak_fp32:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s"
          + (f" (AMX tiles: {full_peak['bf16_amx']:.0f})" if full_peak.get("bf16_amx") else ""))
    print(f"peftcompare fast paths recorded in the run: {ours['fast_paths']}")
    result = {"device": device, "steps": args.steps, "eval_examples": args.eval_examples, "peftcompare": ours,
              "reference": ref, "peak_gflops": peaks}
    if ref:
        result["train_ratio"] = ours["train_examples_per_s"] / ref["train_examples_per_s"]
        result["eval_ratio"] = ours["eval_examples_per_s"] / ref["eval_examples_per_s"]
        print(f"training throughput: {result['train_ratio']:.1f}x the reference (target >= 15x); "
              f"SST-2 evaluation: {result['eval_ratio']:.1f}x (target >= 20x)")
    g = gflops(ours)
    peak = peaks.get(ours["precision"])
    if peak:
        result["peak_fraction"] = g / peak
        print(f"achieved training FLOP/s: {g:.1f} GFLOP/s = {100 * g / peak:.1f}% of the {ours['precision']} "
              f"peak (target >= 50%)")
    if not math.isfinite(g):
        print("warning: no FLOPs counted")
    return result


if __name__ == "__main__":
    main()
