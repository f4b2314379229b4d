"""The offline lesson (issue 12): the default offline sweep, a LoRA summarization run and every offline
preset, each run through the real CLI (`python -m peftcompare train ...`, one process per run, as the
app's worker starts them), on the built-in tiny models and the bundled samples, without recipe flags.

    python bench/bench_offline.py                 # everything (~20 min on 2 cores)
    python bench/bench_offline.py --no_presets    # the sweep and the summarization run (~5 min)
    python bench/bench_offline.py --dev --no_presets   # the same on the development split the recipe was
                                                       # chosen on (first 80% of each training file to train,
                                                       # the last 20% to evaluate; no validation text used)

Prints per run: metric (F1 on the 200 SST-2 validation sentences, ROUGE-L on the 60 SAMSum validation
dialogues, ...), seconds (the whole process: start, model load, training, every epoch's evaluation) and
the checks of the issue:
  - every adapter of the default sweep (spec.OFFLINE_SWEEP) beats zero-shot by >= 0.2 F1
  - each run of the sweep finishes in <= 60 s
  - LoRA summarization reaches ROUGE-L >= 0.3 (three of its summaries are printed)
  - each offline preset: every method above the zero-shot model of the same family (a zero-shot run is
    added where the preset has none) on the same validation set
The recipe (spec.TINY_RECIPES) was chosen on development splits carved from the training files, never on
these validation sets. Seconds depend on the machine's load: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

from peftcompare.core import methods
from peftcompare.service import presets  # noqa: E402
from peftcompare.core.spec import OFFLINE_SWEEP, RunSpec  # noqa: E402
from peftcompare.service.store import Store  # noqa: E402
from peftcompare.core.tasks import get_task  # noqa: E402

MODEL = "builtin:tiny-t5"
GAIN, SECONDS, ROUGE = 0.2, 60.0, 0.3
DATA: dict[str, list[str]] = {"sst2": [], "samsum": []}  # --dev: the data flags of each dataset's runs


def carve_dev(home: Path) -> None:
    """--dev: split each training file 80/20 into a training and a development file."""
    for name in DATA:
        rows = C.read_jsonl(C.SAMPLES / f"{name}_train.jsonl")
        cut = int(len(rows) * 0.8)
        train = C.write_jsonl(rows[:cut], home / f"{name}_dev_train.jsonl")
        dev = C.write_jsonl(rows[cut:], home / f"{name}_dev.jsonl")
        DATA[name] = ["--train_file", str(train), "--validation_file", str(dev)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_cli(home: Path, args: list[str]) -> tuple[dict, float]:
    """One `python -m peftcompare train|zero-shot ...` process; its run record and wall-clock seconds."""
    before = {r["run_id"] for r in Store(home).list_runs()}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "peftcompare", "--home", str(home), *args], cwd=C.ROOT,
                          capture_output=True, text=True)
    secs = time.perf_counter() - t
    new = [r for r in Store(home).list_runs() if r["run_id"] not in before]
    if proc.returncode != 0 or len(new) != 1:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"error: {' '.join(args)} failed: {' | '.join(tail)}")
    return Store(home).get(new[0]["run_id"]), secs


def run_spec(home: Path, spec: RunSpec) -> tuple[dict, float]:
    path = home / f"spec-{spec.spec_hash()}.json"
    path.write_text(spec.to_json())
    return run_cli(home, ["train", "--spec", str(path)])  # every field given: the spec exactly


def metric_of(run: dict) -> tuple[str, float]:
    name = get_task(run["spec"].task).metric
    return name, float(run["metrics"][name])


def label(run: dict) -> str:
    s = run["spec"]
    m = methods.get_method(s.method)
    return m.title + (f" {s.capacity}" if m.capacity_name else "")


def line(run: dict, secs: float, extra: str = "") -> str:
    name, value = metric_of(run)
    epochs = [e for e in run.get("epochs") or [] if e.get("epoch")]
    best = f"best of {len(epochs)} epochs: {max(epochs, key=lambda e: e[name])['epoch']}, " if epochs else ""
    return f"  {label(run):<20} {name} {value:.3f}  {secs:5.1f} s  ({best}{run['trainable_params']:,} trainable){extra}"


def sweep(home: Path, checks: list[tuple[str, bool]]) -> None:
    print(f"== default offline sweep: {MODEL}, sst2 (bundled), no recipe flags", flush=True)
    zero, secs = run_cli(home, ["zero-shot", "--model_name", MODEL, *DATA["sst2"]])
    z = metric_of(zero)[1]
    print(line(zero, secs), flush=True)
    checks.append((f"zero-shot run <= {SECONDS:.0f} s ({secs:.0f} s)", secs <= SECONDS))
    for method, caps in OFFLINE_SWEEP.items():
        for cap in caps:
            run, secs = run_cli(home, ["train", "--model_name", MODEL, "--method", method, "--capacity", str(cap),
                                       *DATA["sst2"]])
            f1 = metric_of(run)[1]
            print(line(run, secs, f"  vs zero-shot {f1 - z:+.3f}"), flush=True)
            checks.append((f"{label(run)}: F1 {f1:.3f} >= zero-shot {z:.3f} + {GAIN}", f1 >= z + GAIN))
            checks.append((f"{label(run)}: {secs:.0f} s <= {SECONDS:.0f} s", secs <= SECONDS))
    spec = zero["spec"]
    print(f"  recipe: lr {spec.learning_rate}, {spec.num_train_epochs} epochs, {spec.train_samples} training "
          f"examples, warm-up {spec.warmup_ratio}, lora_alpha {spec.lora_alpha}, batch "
          f"{spec.per_device_train_batch_size}; {zero['metrics']['eval_samples']} evaluation sentences", flush=True)


def summarization(home: Path, checks: list[tuple[str, bool]]) -> None:
    print(f"== LoRA summarization: {MODEL}, samsum (bundled), no recipe flags", flush=True)
    base = ["--model_name", MODEL, "--task", "summarization", "--dataset", "samsum", *DATA["samsum"]]
    zero, secs = run_cli(home, ["zero-shot", *base])
    print(line(zero, secs), flush=True)
    run, secs = run_cli(home, ["train", *base, "--method", "lora", "--capacity", "8"])
    r = metric_of(run)[1]
    print(line(run, secs, f"  vs zero-shot {r - metric_of(zero)[1]:+.3f}"), flush=True)
    for p in run["metrics"]["_predictions"][:3]:
        print(f"    summary:   {p['prediction']}\n    reference: {p['reference']}")
    checks.append((f"LoRA 8 summarization: ROUGE-L {r:.3f} >= {ROUGE}", r >= ROUGE))
    checks.append((f"LoRA 8 summarization: {secs:.0f} s <= {SECONDS:.0f} s", secs <= SECONDS))


def preset_lines(home: Path, checks: list[tuple[str, bool]]) -> None:
    print("== offline presets: one capacity per method (the smallest), the offline recipe, each against the "
          "zero-shot model of its family", flush=True)
    for name, p in presets.PRESETS.items():
        specs = presets.preset_specs(name, offline=True)
        for dataset in p.datasets:
            chosen, seen = [], set()
            for s in specs:
                if s.dataset == dataset and s.method not in seen:
                    seen.add(s.method)
                    chosen.append(s)
            if "zero_shot" not in seen:  # the baseline: the same model, the same recipe, untouched
                chosen.insert(0, chosen[0].replace(method="zero_shot"))
            results = []
            t = time.perf_counter()
            for s in chosen:
                run, secs = run_spec(home, s)
                results.append((run, secs))
            zero = next(metric_of(r)[1] for r, _ in results if r["spec"].method == "zero_shot")
            metric = metric_of(results[0][0])[0]
            parts = [f"{label(r)} {metric_of(r)[1]:.3f} ({secs:.0f} s)" for r, secs in results]
            learned = [metric_of(r)[1] > zero for r, _ in results if r["spec"].method != "zero_shot"]
            print(f"  {name} / {dataset} on {p.offline_model} ({metric}): " + " | ".join(parts)
                  + f"  -> {sum(learned)}/{len(learned)} methods above zero-shot ({time.perf_counter() - t:.0f} s)",
                  flush=True)
            checks.append((f"preset {name}/{dataset}: every method above zero-shot {zero:.3f}", all(learned)))


def bart_line(home: Path, checks: list[tuple[str, bool]]) -> None:
    """tiny-bart is in no preset: the same lesson on it, both tasks."""
    print("== builtin:tiny-bart (in no preset): sst2 and samsum, the offline recipe", flush=True)
    for task, dataset, runs in (("classification", "sst2", [("zero_shot", 8), ("lora", 8), ("prompt", 8),
                                                             ("prefix", 8)]),
                                ("summarization", "samsum", [("zero_shot", 8), ("lora", 8)])):
        results = []
        for method, cap in runs:
            verb = ["zero-shot"] if method == "zero_shot" else ["train", "--method", method, "--capacity", str(cap)]
            results.append(run_cli(home, [*verb, "--model_name", "builtin:tiny-bart", "--task", task,
                                          "--dataset", dataset]))
        zero = metric_of(results[0][0])[1]
        learned = [metric_of(r)[1] > zero for r, _ in results[1:]]
        print(f"  tiny-bart / {dataset}: " + " | ".join(f"{label(r)} {metric_of(r)[1]:.3f} ({s:.0f} s)"
                                                       for r, s in results)
              + f"  -> {sum(learned)}/{len(learned)} above zero-shot", flush=True)
        checks.append((f"tiny-bart/{dataset}: every method above zero-shot {zero:.3f}", all(learned)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no_presets", action="store_true", help="only the sweep and the summarization run")
    ap.add_argument("--dev", action="store_true", help="train on the first 80%% of each training file and "
                    "evaluate on the last 20%% (the split the recipe was chosen on)")
    ap.add_argument("--json", default=None, help="also write the checks here")
    args = ap.parse_args(argv)
    home = C.tmp_home("offline")
    if args.dev:
        carve_dev(home)
        print("data: the development split (first 80% of each bundled training file / last 20%)")
    t0 = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, load average {load()} (1/5/15 min); store {home}", flush=True)
    from peftcompare.engine import pretrain

    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "peftcompare.engine.pretrain"], cwd=C.ROOT, check=True)
    print(f"pretrained built-ins ready ({time.perf_counter() - t:.0f} s; cache {pretrain.cache_dir()})", flush=True)
    checks: list[tuple[str, bool]] = []
    sweep(home, checks)
    summarization(home, checks)
    if not args.no_presets:
        preset_lines(home, checks)
        bart_line(home, checks)
    print(f"== checks ({time.perf_counter() - t0:.0f} s in all; load average now {load()})")
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    print(f"{sum(ok for _, ok in checks)}/{len(checks)} checks pass")
    if args.json:
        Path(args.json).write_text(json.dumps([{"check": c, "ok": ok} for c, ok in checks], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
