"""Run every benchmark (each in its own process) and print one summary table against the targets.

    python bench/run_all.py --quick                 # a few minutes on 2 cores
    python bench/run_all.py                         # the full budgets
    python bench/run_all.py --device cuda           # on a GPU machine: absolute times
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_train", "bench_compare", "bench_grid", "bench_pack", "bench_sweep", "bench_precision")


def run(name: str, args: list[str], out: Path) -> dict | None:
    t = time.perf_counter()
    print(f"== {name} {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args, "--json", str(out)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = [ln for ln in proc.stdout.splitlines() if "warn" not in ln.lower() and "Map:" not in ln]
    print("\n".join(lines[-30:]))
    print(f"   ({time.perf_counter() - t:.0f} s, exit {proc.returncode})", flush=True)
    if proc.returncode != 0 or not out.is_file():
        return None
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    C.device_arg(p)
    a = p.parse_args(argv)
    device = C.pick_device(a.device)
    common = (["--quick"] if a.quick else [])
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only:
            extra = [] if name in ("bench_precision", "bench_sweep") else ["--device", device]
            res[name] = run(name, common + extra, Path(tmp, f"{name}.json"))
    gpu = device.startswith("cuda")
    rows = []

    def row(what, value, target, ok):
        rows.append([what, value, target, "n/a" if ok is None else ("yes" if ok else "NO")])

    t = res.get("bench_train")
    if t:
        if t.get("train_ratio") is not None:
            row("training throughput vs Seq2SeqTrainer", f"{t['train_ratio']:.1f}x", ">= 15x",
                None if gpu else t["train_ratio"] >= 15)
            row("SST-2 evaluation throughput vs reference", f"{t['eval_ratio']:.1f}x", ">= 20x",
                None if gpu else t["eval_ratio"] >= 20)
        ours = t["peftcompare"]
        row("training examples/s (peftcompare)", f"{ours['train_examples_per_s']:.1f}", "", None)
        if t.get("peak_fraction") is not None:
            row(f"achieved training FLOP/s ({ours['precision']})", f"{100 * t['peak_fraction']:.1f}% of peak",
                ">= 50%", t["peak_fraction"] >= 0.5)
    c = res.get("bench_compare")
    if c:
        row(f"zero-shot + 8 LoRA latency ({c['backend']})", f"{c['latency_ratio']:.2f}x", "<= 2x",
            c["latency_ratio"] <= 2)
        if "latency_ratio_peft" in c:
            row("  same with PEFT mixed-adapter batches", f"{c['latency_ratio_peft']:.2f}x", "<= 2x",
                c["latency_ratio_peft"] <= 2)
        row("compare memory within base + 10% + adapters", "yes" if c["rss_ok"] else "no", "yes", c["rss_ok"])
    g = res.get("bench_grid")
    if g:
        value = f"{g['hours']:.2f} h" if not gpu else f"{60 * g['hours']:.1f} min"
        row("full reference grid (estimate)", value, "<= 4 h" if not gpu else "<= 10 min",
            g["hours"] <= g["target_hours"])
    pk = res.get("bench_pack")
    if pk:
        for name, r in pk.items():
            if name.startswith("evaluation: "):  # the packs' evaluation passes vs each run's own
                row(f"packed {name} vs each run's own", f"{r['speedup']:.2f}x", "", None)
                continue
            if "one pack" in name:  # measured to show why the planner refuses it
                row(f"  {name}: packed vs one after another", f"{r['speedup']:.2f}x", "", None)
                continue
            row(f"packed training {name} vs one after another", f"{r['speedup']:.2f}x", ">= 2x",
                None if gpu else r["speedup"] >= 2)
            if r.get("peak_gflops"):
                frac = r["packed_gflops"] / r["peak_gflops"]
                row(f"  packed step FLOP/s ({r['precision']})", f"{100 * frac:.1f}% of peak", ">= 40%",
                    None if gpu else frac >= 0.4)
    sw = res.get("bench_sweep")
    if sw:
        for name, r in sw.items():
            row(f"`sweep --pack 4` {name} vs one at a time (wall-clock)", f"{r['speedup']:.2f}x", "", None)
    pr = res.get("bench_precision")
    if pr:
        row("bf16 vs fp32 learning check (mean f1)", f"{pr['mean_f1']['bf16']:.3f} vs {pr['mean_f1']['fp32']:.3f}",
            "no loss beyond noise", pr["verdict"] == "auto = bf16")
        row("precision verdict", pr["verdict"], "", None)
    print(f"\nsummary ({device}{', quick' if a.quick else ''}):")
    print(C.fmt_table(rows, ["figure", "value", "target", "met"]))
    failed = [n for n in a.only if res.get(n) is None]
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
