"""The Compare engine: zero-shot + 8 LoRA adapters on one text against one zero-shot call.

8 LoRA adapters (q,v, r=8, different random weights) are made with PEFT in a child process and
registered in a temporary store as completed runs, so the measuring process never held a second
model. Then, in this process, one CompareEngine on builtin:random-flan-t5-small:
  latency  median of --repeats calls after a warm-up: compare(text, []) vs compare(text, 8 adapters),
           for classification (label scoring) and summarization (greedy generation, --max_new tokens)
  memory   peak resident memory during the zero-shot calls (base) and during the 8-adapter calls;
           budget = base x 1.10 + the adapters' file size

    python bench/bench_compare.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

TEXTS = {"classification": "a warm , funny and surprisingly moving film about growing up",
         "summarization": "Anna: are we still on for lunch tomorrow?\nBen: yes, 12:30 at the usual place.\n"
                          "Anna: great, I'll bring the slides for the project.\nBen: perfect, see you there!"}


def make_adapters(home: str, n: int, model_name: str) -> None:
    """Child process: n LoRA adapters per task, registered as completed runs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peftcompare.engine import models
    from peftcompare.core.spec import RunSpec
    from peftcompare.service.store import Store
    from peftcompare.core.tasks import get_dataset

    store = Store(home)
    loaded = models.load_model(model_name)
    model = get_peft_model(loaded.model, LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16,
                                                    target_modules=["q", "v"]))
    for task in ("classification", "summarization"):
        for i in range(n):
            torch.manual_seed(100 + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.normal_(0, 0.02)
            spec = RunSpec(task=task, method="lora", capacity=8, model_name=model_name, seed=i).resolved()
            run_id = store.create_run(spec, status="running")
            staging = store.staging_path(run_id)
            model.save_pretrained(str(staging))
            ds = get_dataset(spec.dataset)
            record = {"run_id": run_id, "spec": spec.to_dict(), "label_words": list(ds.label_names),
                      "metrics": {}, "precision": "fp32"}
            (staging / "run.json").write_text(json.dumps(record))
            size = (staging / "adapter_model.safetensors").stat().st_size
            store.transition(run_id, "completed", ("running",), finished_at=time.time(), adapter_bytes=size,
                             adapter_dir=str(store.commit_adapter(run_id, staging)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--max_new", type=int, default=32, help="generated tokens for summarization "
                   "(a random model never stops early)")
    p.add_argument("--model_name", default=C.SMALL)
    p.add_argument("--backends", nargs="+", default=["bank", "peft"], choices=["bank", "peft"],
                   help="LoRA backends to measure, in this order (the first is the engine's default: its "
                        "memory is the one checked; PEFT's layers stay in the model after its turn)")
    p.add_argument("--quick", action="store_true", help="--repeats 3 --max_new 16")
    p.add_argument("--json", default=None)
    p.add_argument("--_make", default=None, help=argparse.SUPPRESS)
    C.device_arg(p)
    a = p.parse_args(argv)
    if a._make:
        make_adapters(a._make, a.adapters, a.model_name)
        return {}
    if a.quick:
        a.repeats, a.max_new = 3, 16
    device = C.pick_device(a.device)
    home = C.tmp_home("bench-compare")
    import shutil

    try:
        subprocess.run([sys.executable, __file__, "--_make", str(home), "--adapters", str(a.adapters),
                        "--model_name", a.model_name], check=True, capture_output=True, text=True)
        return measure(a, device, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def measure(a, device: str, home: Path) -> dict:
    from peftcompare.engine.compare import CompareEngine
    from peftcompare.service.store import Store

    store = Store(home)
    runs = store.list_runs(status=("completed",))
    engine = CompareEngine(store, device=device)
    print(f"bench_compare: {a.model_name}, zero-shot + {a.adapters} LoRA adapters (q,v r=8), device {device}, "
          f"precision {engine.precision}, median of {a.repeats}", flush=True)
    rows, result = [], {"device": device, "precision": engine.precision, "tasks": {}}
    for backend, task in [(b, t) for b in a.backends for t in ("classification", "summarization")]:
        engine.lora_backend = backend
        ids = [r["run_id"] for r in runs if r["task"] == task][: a.adapters]
        adapter_bytes = sum(Path(store.adapter_path(i), "adapter_model.safetensors").stat().st_size for i in ids)
        text = TEXTS[task]

        def call(run_ids):
            C.sync(device)
            t = time.perf_counter()
            out = engine.compare(text, run_ids, task=task, model_name=a.model_name, max_new_tokens=a.max_new)
            C.sync(device)
            return time.perf_counter() - t, out

        call([])  # warm-up: loads the base
        with C.PeakRSS() as zs_mem:
            zs = [call([])[0] for _ in range(a.repeats)]
        base_rss = zs_mem.peak  # the base model's resident memory, measured the same way as below
        with C.PeakRSS() as mem:
            call(ids)  # warm-up: loads the adapters
            runs_all = [call(ids) for _ in range(a.repeats)]
        many = [t for t, _ in runs_all]
        cols = runs_all[-1][1]["columns"]
        assert len(cols) == a.adapters + 1 and all(c["batched_with"] == a.adapters + 1 for c in cols)
        ratio = C.median(many) / C.median(zs)
        budget = base_rss * 1.10 + adapter_bytes / 2**20
        result["tasks"][f"{task}|{backend}"] = {"zero_shot_ms": 1000 * C.median(zs), "all_ms": 1000 * C.median(many),
                                 "latency_ratio": ratio, "base_rss_mb": base_rss, "peak_rss_mb": mem.peak,
                                 "adapters_mb": adapter_bytes / 2**20, "rss_budget_mb": budget,
                                 "rss_ratio_to_budget": mem.peak / budget}
        rows.append([task, backend, f"{1000 * C.median(zs):.1f}", f"{1000 * C.median(many):.1f}", f"{ratio:.2f}x",
                     f"{base_rss:.0f}", f"{mem.peak:.0f}", f"{adapter_bytes / 2**20:.1f}", f"{budget:.0f}",
                     "ok" if mem.peak <= budget else "OVER"])
    print(C.fmt_table(rows, ["task", "LoRA backend", "zero-shot ms", f"zs+{a.adapters} LoRA ms", "latency ratio",
                             "base RSS MB",
                             "peak RSS MB", "adapters MB", "RSS budget MB", "memory"]))
    first = {k: t for k, t in result["tasks"].items() if k.endswith("|" + a.backends[0])}
    worst = max(t["latency_ratio"] for t in first.values())
    result["latency_ratio"] = worst
    result["backend"] = a.backends[0]
    for b in a.backends:
        result[f"latency_ratio_{b}"] = max(t["latency_ratio"] for k, t in result["tasks"].items()
                                           if k.endswith("|" + b))
    result["rss_ok"] = all(t["peak_rss_mb"] <= t["rss_budget_mb"] for t in first.values())
    print(f"zero-shot + {a.adapters} LoRA adapters ({a.backends[0]}): {worst:.2f}x one zero-shot call at worst "
          "(target <= 2x); "
          f"memory within base + 10% + adapters: {'yes' if result['rss_ok'] else 'NO'}")
    C.emit_json(result, a.json)
    return result


if __name__ == "__main__":
    main()
