"""Estimate of the full reference grid on this machine, from measured throughput.

The grid: LoRA, prefix-tuning and prompt-tuning x 4 capacities x 2 tasks (SST-2, SAMSum), 2000 training
examples, 3 epochs, evaluation after every epoch (as run_training does) on the full validation sets:
SST-2 872 sentences (label scoring), SAMSum 818 dialogues (greedy generation, up to 128 new tokens).

Measured here on builtin:random-flan-t5-small with the training loop's own pieces (prepare_model,
length-grouped batches, dynamic padding, precision auto), on synthetic token sequences of realistic
length: SST-2 sources ~25 tokens and 1-token labels; SAMSum dialogues ~150 tokens and summaries ~30.
Each method is measured at its smallest and largest grid capacity (--warmup + --steps training steps,
one evaluation batch); capacities in between are interpolated linearly. A random model never emits
EOS, so generation is timed twice with a fixed number of new tokens: the full 128 (an upper bound: no
trained model fills it) and the longest reference summary of the batch plus EOS (the expected case: a
fine-tuned model stops near its reference's length, and a greedy batch runs until its longest row stops).
The estimate uses the expected case; the upper bound is printed beside it. Three selection protocols are
estimated from the same measurements (PROTOCOLS below): the published experiments' (validation after every
epoch, the "hours" of the JSON, comparable with earlier figures), the product's default (a dev split after
every epoch, validation once) and selection_metric=loss (dev loss after every epoch, validation once).

    python bench/bench_grid.py [--quick] [--pack] [--device cuda]
"""
from __future__ import annotations

import argparse
import random
import time

import _common as C

TASKS = {  # name: (task, source tokens, target tokens, validation size, train batch, eval batch)
    "sst2": ("classification", 25, 2, 872),
    "samsum": ("summarization", 150, 30, 818),
}
METHODS = ("lora", "prefix", "prompt")
TRAIN_EXAMPLES, EPOCHS, BATCH, MAX_NEW = 2000, 3, 16, 128
EVAL_BATCH = BATCH  # --eval_batch: a GPU run of the grid passes --per_device_eval_batch_size 128


def synthetic(n: int, mean: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(max(2, int(mean * rng.uniform(0.5, 1.5)) - 1))] + [1]
            for _ in range(n)]


def synthetic_feats(task_key: str, n: int, vocab: int) -> list[dict]:
    """n training examples of the task's realistic lengths (sources, and labels or summaries)."""
    task, src_len, tgt_len, _ = TASKS[task_key]
    sources = synthetic(n, src_len, vocab, 1)
    targets = synthetic(n, tgt_len, vocab, 2) if task == "summarization" else \
        [[random.Random(i).choice([230, 231]), 1] for i in range(n)]
    return [{"input_ids": s, "labels": t} for s, t in zip(sources, targets)]


def eval_inputs(task_key: str, eb: int, vocab: int) -> tuple[list[dict], list[dict], int, list[dict]]:
    """What one evaluation batch is timed on, alone (`measure`) and packed (`measure_packed`) alike: a warm-up
    batch and the timed batch of sources, the new tokens of the expected case (the longest reference summary
    of the batch, EOS included), and a dev-loss batch (sources with references)."""
    _, src_len, tgt_len, _ = TASKS[task_key]
    sources = [{"input_ids": s} for s in synthetic(2 * eb, src_len, vocab, 3)]
    expected_new = max(len(t) for t in synthetic(eb, tgt_len, vocab, 4))
    loss_rows = [{"input_ids": s, "labels": t} for s, t in zip(synthetic(eb, src_len, vocab, 5),
                                                                synthetic(eb, tgt_len, vocab, 6))]
    return sources[:eb], sources[eb:], expected_new, loss_rows


def measure(model_name: str, method: str, capacity: int, task_key: str, steps: int, warmup: int,
            device: str) -> dict:
    import torch

    from peftcompare.engine import data as data_mod
    from peftcompare.engine import evaluate as eval_mod
    from peftcompare.engine import models, runtime, train
    from peftcompare.core.spec import RunSpec

    task = TASKS[task_key][0]
    spec = RunSpec(task=task, method=method, capacity=capacity, model_name=model_name,
                   per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH).resolved()
    _, dtype = runtime.resolve_precision(spec.precision, device)
    t0 = time.perf_counter()
    loaded = models.load_model(model_name)
    load_s = time.perf_counter() - t0
    vocab = min(len(loaded.tokenizer), loaded.model.config.vocab_size)
    n = (warmup + steps) * BATCH
    feats = synthetic_feats(task_key, n, vocab)
    model = train.prepare_model(spec, loaded, total_steps=100).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
    lengths = [len(f["input_ids"]) + len(f["labels"]) for f in feats]
    batches = data_mod.length_grouped_batches(lengths, BATCH, 0)
    model.train()
    for i, idx in enumerate(batches[: warmup + steps]):
        if i == warmup:
            C.sync(device)
            t_train = time.perf_counter()
        batch = {k: v.to(device) for k, v in loaded.family.collate([feats[j] for j in idx],
                                                                    loaded.tokenizer).items()}
        with eval_mod.autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    C.sync(device)
    train_s = (time.perf_counter() - t_train) / steps
    # one evaluation batch, as evaluate() runs it (after a warm-up batch)
    model.eval()
    eb = EVAL_BATCH
    warm, timed, expected_new, loss_rows = eval_inputs(task_key, eb, vocab)
    timings = {}
    with torch.no_grad():
        for k, new_tokens in ((0, 2), (1, MAX_NEW), (1, expected_new)):
            if task == "classification" and new_tokens != MAX_NEW and k:
                continue
            rows = timed if k else (warm if task == "classification" else warm[:2])  # short generation warm-up
            C.sync(device)
            t = time.perf_counter()
            if task == "classification":
                eval_mod.classify(model, loaded.family, loaded.tokenizer, rows, ["negative", "positive"], eb,
                                  device, dtype)
            else:
                batch = {k2: v.to(device) for k2, v in loaded.family.collate(rows, loaded.tokenizer).items()}
                with eval_mod.autocast(device, dtype):
                    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1,
                                   do_sample=False)
            C.sync(device)
            timings[new_tokens] = time.perf_counter() - t
    upper = timings[MAX_NEW]
    # one dev-loss batch (selection_metric=loss): a forward on the references, no generation
    with torch.no_grad():
        batch = {k2: v.to(device) for k2, v in loaded.family.collate(loss_rows, loaded.tokenizer).items()}
        for k in range(2):  # the first is a warm-up
            C.sync(device)
            t = time.perf_counter()
            with eval_mod.autocast(device, dtype):
                model(**batch).loss.item()
            C.sync(device)
            loss_s = time.perf_counter() - t
    return {"train_step_s": train_s, "loss_batch_s": loss_s,
            "eval_batch_s": timings.get(expected_new, upper), "eval_batch_upper_s": upper,
            "expected_new_tokens": expected_new if task != "classification" else None, "load_s": load_s}


def measure_packed(model_name: str, method: str, caps: tuple, task_key: str, steps: int, warmup: int,
                   device: str) -> dict:
    """The method's whole capacity grid as one pack (engine/packing.py), on the same synthetic batches as
    `measure`: seconds per packed training step, and per packed evaluation batch (every run's batch of EVAL_BATCH
    rows stacked, each answered by its own adapter: label scoring, generation at the expected and the full
    length, a dev-loss forward). One packed batch does what len(caps) batches do alone."""
    import torch

    from peftcompare.core.spec import RunSpec
    from peftcompare.engine import evaluate as eval_mod
    from peftcompare.engine import models, packing

    task = TASKS[task_key][0]
    loaded = models.load_model(model_name)
    vocab = min(len(loaded.tokenizer), loaded.model.config.vocab_size)
    n = (warmup + steps) * BATCH
    feats = synthetic_feats(task_key, n, vocab)
    specs = [RunSpec(task=task, method=method, capacity=cap, model_name=model_name, selection="validation",
                     per_device_train_batch_size=BATCH, per_device_eval_batch_size=EVAL_BATCH, train_samples=n,
                     eval_samples=8).resolved() for cap in caps]
    pack, members = C.start_pack(specs, loaded, feats, tag="grid")  # the synthetic batches `measure` times
    for i in range(warmup + steps):
        if i == warmup:
            C.sync(device)
            t0 = time.perf_counter()
        pack._step(members, i % len(members[0].batches), last=False)
    C.sync(device)
    train_s = (time.perf_counter() - t0) / steps
    # the evaluation batches, stacked: the same rows `measure` times, once for every run of the pack
    eb, k = EVAL_BATCH, len(members)
    dtype = members[0].s.dtype
    pack_rows = packing._PackRows(pack, members)
    parts = [(j, eb) for j in range(k)]
    _, eval_rows, expected_new, loss_rows = eval_inputs(task_key, eb, vocab)
    label_ids = eval_mod.label_token_ids(loaded.tokenizer, ["negative", "positive"])  # what `measure` scores
    timings = {}
    with torch.no_grad(), pack_rows.evaluating():
        batch = {key: v.to(device) for key, v in loaded.family.collate(eval_rows * k, loaded.tokenizer).items()}
        cases = ((0, 2), (1, 2)) if task == "classification" else ((0, 2), (1, MAX_NEW), (1, expected_new))
        for timed, new_tokens in cases:  # the first is a warm-up
            C.sync(device)
            t = time.perf_counter()
            with pack_rows.answering(parts) as model, eval_mod.autocast(device, dtype):
                if task == "classification":
                    loaded.family.label_logprobs(model, batch, label_ids)
                else:
                    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1,
                                   do_sample=False)
            C.sync(device)
            if timed:
                timings[new_tokens] = time.perf_counter() - t
        lbatch = {key: v.to(device) for key, v in loaded.family.collate(loss_rows * k, loaded.tokenizer).items()}
        for _ in range(2):  # the first is a warm-up
            C.sync(device)
            t = time.perf_counter()
            with pack_rows.answering(parts) as model, eval_mod.autocast(device, dtype):
                torch.stack(pack_rows.losses(model, lbatch, parts)).sum().item()
            C.sync(device)
            loss_s = time.perf_counter() - t
    upper = timings.get(MAX_NEW, timings.get(2))
    return {"train_step_s": train_s, "loss_batch_s": loss_s, "eval_batch_s": timings.get(expected_new, upper),
            "eval_batch_upper_s": upper, "load_s": 0.0}


def packs_together(method: str, caps: tuple) -> bool:
    """Whether `sweep --pack 4` trains the method's capacity grid as one pack (core/packs.plan_packs): LoRA's
    ranks do; prompt tuning's lengths train alone (every row padded to the longest costs more than it saves)."""
    from peftcompare.core import packs
    from peftcompare.core.spec import RunSpec

    specs = [RunSpec(method=method, capacity=c, model_name="builtin:random-flan-t5-small") for c in caps]
    return len(packs.plan_packs(specs, len(specs))) == 1


# how the best epoch is chosen (core/spec.py: selection, selection_metric): what is evaluated after each epoch
# and at the end. "original": the published experiments' protocol, the validation split scored after every epoch;
# "dev": the product's default, a dev split (10 % of the training examples, at least 100) scored after every
# epoch and validation once on the chosen state; "dev-loss": the dev split's loss after every epoch (a forward,
# no generation) and validation once
PROTOCOLS = ("original", "dev", "dev-loss")
DEV_EXAMPLES = max(100, TRAIN_EXAMPLES // 10)


def run_seconds(m: dict, task_key: str) -> dict:
    """One run's seconds: training, loading, and evaluation under each protocol (expected and upper bound)."""
    batches = lambda n: -(-n // EVAL_BATCH)  # noqa: E731
    n_val = TASKS[task_key][3]
    steps = EPOCHS * -(-TRAIN_EXAMPLES // BATCH)
    out = {"train": steps * m["train_step_s"], "load": m["load_s"]}
    for key, per_batch in (("eval", m["eval_batch_s"]), ("eval_upper", m["eval_batch_upper_s"])):
        final = batches(n_val) * per_batch
        out[key] = {"original": EPOCHS * final,
                    "dev": EPOCHS * batches(DEV_EXAMPLES) * per_batch + final,
                    "dev-loss": EPOCHS * batches(DEV_EXAMPLES) * m["loss_batch_s"] + final}
    return out


def _interp_all(measured: dict, method: str, task_key: str, probe: tuple, cap: int) -> dict:
    """A capacity's per-step and per-batch seconds, interpolated linearly between the measured capacities."""
    lo, hi = probe[0], probe[-1]
    w = 0.0 if hi == lo else (cap - lo) / (hi - lo)
    return {k: (1 - w) * measured[(method, task_key, lo)][k] + w * measured[(method, task_key, hi)][k]
            for k in ("train_step_s", "loss_batch_s", "eval_batch_s", "eval_batch_upper_s", "load_s")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--quick", action="store_true", help="measure the smallest capacity only, 2 steps")
    p.add_argument("--json", default=None)
    p.add_argument("--eval_batch", type=int, default=BATCH, help="evaluation batch (the spec's "
                   "per_device_eval_batch_size; 16 is the reference)")
    p.add_argument("--pack", action="store_true", help="train each method's capacities together where "
                   "sweep --pack 4 would (LoRA's ranks): its grid's training and evaluation times are the pack's "
                   "(stacked steps and stacked evaluation batches)")
    C.device_arg(p)
    a = p.parse_args(argv)
    global EVAL_BATCH
    EVAL_BATCH = a.eval_batch
    if a.quick:
        a.steps = 2
    device = C.pick_device(a.device)
    C.tmp_home("bench-grid")
    from peftcompare.core import methods
    from peftcompare.engine import runtime

    if device == "cpu":
        runtime.configure_cpu()
    print(f"bench_grid: {a.model_name} on {device}; grid {len(METHODS)} methods x 4 capacities x 2 tasks, "
          f"{TRAIN_EXAMPLES} examples x {EPOCHS} epochs, eval batch {EVAL_BATCH}; protocols: original (validation "
          f"after every epoch: SST-2 872, SAMSum 818 x up to {MAX_NEW} tokens), dev ({DEV_EXAMPLES} dev examples "
          "after every epoch, validation once), dev-loss (dev loss after every epoch, validation once)", flush=True)
    rows = []
    zero = lambda: {k: 0.0 for k in PROTOCOLS}  # noqa: E731
    total, upper_total, per_task = zero(), zero(), {t: zero() for t in TASKS}
    measured = {}

    def add(task_key: str, secs: float, upper: float | None = None, protocol: str | None = None) -> None:
        for k in ([protocol] if protocol else PROTOCOLS):
            total[k] += secs
            upper_total[k] += secs if upper is None else upper
            per_task[task_key][k] += secs

    for method in METHODS:
        caps = methods.get_method(method).capacities
        probe = (caps[0],) if a.quick else (caps[0], caps[-1])
        for task_key in TASKS:
            for cap in probe:
                m = measure(a.model_name, method, cap, task_key, a.steps, a.warmup, device)
                measured[(method, task_key, cap)] = m
                gen = (f" ({m['expected_new_tokens']} new tokens; {m['eval_batch_upper_s']:.3f} s at {MAX_NEW})"
                       if m["expected_new_tokens"] else "")
                print(f"  {method} {cap} {task_key}: {m['train_step_s']:.3f} s/step, "
                      f"{m['eval_batch_s']:.3f} s/eval batch{gen}, {m['loss_batch_s']:.3f} s/loss batch", flush=True)
            alone = []  # each capacity's seconds: what a pack of them replaces
            for cap in caps:
                secs = run_seconds(_interp_all(measured, method, task_key, probe, cap), task_key)
                alone.append(secs)
                add(task_key, secs["train"] + secs["load"])
                for k in PROTOCOLS:
                    add(task_key, secs["eval"][k], secs["eval_upper"][k], protocol=k)
                rows.append([method, cap, task_key, f"{secs['train'] / 60:.1f}",
                             " / ".join(f"{secs['eval'][k] / 60:.1f}" for k in PROTOCOLS)])
            if a.pack and packs_together(method, caps):
                # the grid's runs train and evaluate as one pack: its times replace theirs
                pm = measure_packed(a.model_name, method, caps, task_key, a.steps, a.warmup, device)
                packed = run_seconds(pm, task_key)  # its load_s is 0: the runs' loading stays as counted above
                add(task_key, packed["train"] - sum(r["train"] for r in alone))
                for k in PROTOCOLS:
                    add(task_key, packed["eval"][k] - sum(r["eval"][k] for r in alone),
                        packed["eval_upper"][k] - sum(r["eval_upper"][k] for r in alone), protocol=k)
                print(f"  {method} packed ({len(caps)} runs) {task_key}: {pm['train_step_s']:.3f} s/step, "
                      f"{pm['eval_batch_s']:.3f} s/eval batch of {len(caps)} x {EVAL_BATCH}; training "
                      f"{sum(r['train'] for r in alone) / 60:.1f} -> {packed['train'] / 60:.1f} min, evaluation "
                      f"(dev protocol) {sum(r['eval']['dev'] for r in alone) / 60:.1f} -> "
                      f"{packed['eval']['dev'] / 60:.1f} min", flush=True)
                rows.append([f"{method} (pack)", "all", task_key, f"{packed['train'] / 60:.1f}",
                             " / ".join(f"{packed['eval'][k] / 60:.1f}" for k in PROTOCOLS)])
    print(C.fmt_table(rows, ["method", "capacity", "task", "train min", "eval min " + " / ".join(PROTOCOLS)]))
    target = 4.0 if device == "cpu" else 10 / 60
    n_runs = len(METHODS) * 4 * len(TASKS)
    print(f"full reference grid ({n_runs} runs{', LoRA packed' if a.pack else ''}) on {device}; target <= "
          f"{'4 h (issue 16: 2 h)' if device == 'cpu' else '10 min'}")
    print(C.fmt_table([[k, f"{total[k] / 3600:.2f}", f"{per_task['sst2'][k] / 3600:.2f}",
                        f"{per_task['samsum'][k] / 3600:.2f}", f"{upper_total[k] / 3600:.2f}"] for k in PROTOCOLS],
                      ["protocol", "hours", "SST-2 h", "SAMSum h", f"upper bound h (every generation {MAX_NEW} tokens)"]))
    hours = total["original"] / 3600
    result = {"device": device, "hours": hours, "packed": a.pack, "target_hours": target,
              "upper_bound_hours": upper_total["original"] / 3600,
              "by_protocol_hours": {k: v / 3600 for k, v in total.items()},
              "by_protocol_upper_hours": {k: v / 3600 for k, v in upper_total.items()},
              "per_task_hours": {t: {k: v / 3600 for k, v in d.items()} for t, d in per_task.items()},
              "measured": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in measured.items()}}
    C.emit_json(result, a.json)
    return result


if __name__ == "__main__":
    main()
