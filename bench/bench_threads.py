"""Thread count and OpenMP waiting: forward-pass latency of the tiny and the small model.

Each setting runs in a fresh subprocess (libgomp reads its environment once, when torch loads).
On a machine shared with other busy processes, OpenMP workers that spin (libgomp's default: 300,000
spins) wait for a descheduled peer on every operator. peftcompare sets GOMP_SPINCOUNT=20000 (see
peftcompare/__init__.py): as fast as the default on an idle machine, and it sleeps instead of stalling
on a busy one. Run it once idle and once while something else is busy.

    python bench/bench_threads.py [--models builtin:tiny-t5 builtin:random-flan-t5-small]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import _common as C

PROBE = r"""
import json, sys, time, torch
from peftcompare import models
name, threads = sys.argv[1], int(sys.argv[2])
m = models.load_model(name).model.eval()
torch.set_num_threads(threads); torch.set_flush_denormal(True)
ids = torch.randint(3, 2000, (16, 24)); dec = torch.zeros(16, 1, dtype=torch.long)
with torch.no_grad():
    for _ in range(3): m(input_ids=ids, decoder_input_ids=dec)
    times = []
    for _ in range(10):
        t = time.perf_counter(); m(input_ids=ids, decoder_input_ids=dec); times.append(time.perf_counter() - t)
print(json.dumps({"ms": 1000 * sorted(times)[len(times) // 2]}))
"""


SETTINGS = {"libgomp default": {"GOMP_SPINCOUNT": "300000"}, "peftcompare": {"GOMP_SPINCOUNT": "20000"},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}}


def measure(model: str, threads: int, setting: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(C.ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OMP_WAIT_POLICY", None)
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, "-c", PROBE, model, str(threads)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["builtin:tiny-t5", C.SMALL])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from peftcompare.engine import runtime

    cores = runtime.usable_cores()
    print(f"bench_threads: {cores} usable cores, load average {os.getloadavg()[0]:.1f}, batch 16 x 24 tokens, "
          "one forward pass (median of 10)")
    rows, result = [], {"cores": cores, "load": os.getloadavg()[0], "ms": {}}
    for model in a.models:
        for threads in sorted({1, cores}):
            for setting in SETTINGS:
                ms = measure(model, threads, setting)
                result["ms"][f"{model}|{threads}|{setting}"] = ms
                rows.append([model, threads, setting, f"{ms:.1f}"])
    print(C.fmt_table(rows, ["model", "threads", "OpenMP waiting", "ms/forward"]))
    C.emit_json(result, a.json)
    return result


if __name__ == "__main__":
    main()
