"""python -m peftcompare train | zero-shot | params | sweep | results | plot | compare | worker | ...

Flags are the RunSpec fields (named like transformers' TrainingArguments) with the spec's help text.
A user mistake exits with status 2 and one line on stderr, and writes nothing to the store.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from peftcompare.core import methods, tasks
from peftcompare.core.spec import RunSpec, spec_fields, with_offline_recipe
from peftcompare.service import (
    analysis,
    bundle,
    comparing,
    disagreements,
    execution,
    integrity,
    jobs,
    plotting,
    presets,
    runs,
    system,
)
from peftcompare.service.presets import PRESETS
from peftcompare.service.runs import preflight, preflight_all
from peftcompare.service.store import Store

EXIT_USAGE = 2


class UserError(ValueError):
    pass


def _add_spec_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for f in spec_fields():
        if f.name in skip:
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        p.add_argument(f"--{f.name}", type=_typed(kind, f.name), default=None,
                       help=f"{f.metadata.get('help', '')} (default: {f.default!r})")


def _typed(kind, name):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected {kind.__name__}, got {text!r}") from None
    convert.__name__ = kind.__name__
    return convert


def _spec_from_args(args, **overrides) -> RunSpec:
    values = {}
    if getattr(args, "spec", None):
        path = Path(args.spec)
        if not path.is_file():
            raise UserError(f"spec: {args.spec} does not exist")
        if path.suffix.lower() != ".json":
            raise UserError(f"spec: {path.name} should be a .json file")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # bad JSON or bad UTF-8
            raise UserError(f"spec: {path.name} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(values, dict):
            raise UserError(f"spec: {path.name} should hold a JSON object")
        values.pop("spec_version", None)
    for f in spec_fields():
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update(overrides)
    # a built-in tiny model takes the offline recipe for every recipe field the flags and --spec leave unset
    return RunSpec.from_dict(with_offline_recipe(values))


def _store(args):

    return Store(args.home)


# -- commands -------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    store = _store(args)
    if args.run_id:  # started by the queue worker: the record exists already
        run = store.get(args.run_id)
        if run is None:
            raise UserError(f"run_id: no run {args.run_id}")
        if run["status"] == "queued":
            store.transition(args.run_id, "running", ("queued",), pid=os.getpid())
        elif run["status"] != "running":
            raise UserError(f"run_id: run {args.run_id} is {run['status']}, not queued")
        store.update(args.run_id, pid=os.getpid())
        spec = run["spec"]
        run_id = args.run_id
    else:
        spec = preflight(_spec_from_args(args, **({"method": methods.BASELINE} if args.command == "zero-shot" else {})))
        run_id = _create_running(store, spec)
    return execution.execute(spec, store, run_id, progress=_progress_bar(spec.label()))


def _create_running(store, spec) -> str:
    from accelerate import PartialState

    state = PartialState(cpu=True) if os.environ.get("WORLD_SIZE") else None
    if state is not None and state.num_processes > 1:
        # every data-parallel process must write to the same record: the main one creates it
        run_id = None
        if state.is_main_process:
            run_id = store.create_run(spec, status="running", pid=os.getpid())
        from accelerate.utils import broadcast_object_list

        box = [run_id]
        broadcast_object_list(box)
        return box[0]
    return store.create_run(spec, status="running", pid=os.getpid())


def _progress_bar(label: str = ""):
    """A tqdm bar (steps, loss, rate, ETA) on a terminal; None otherwise, and the run logs plain lines."""
    if not sys.stderr.isatty():
        return None
    return _TerminalBar(label)


class _TerminalBar:
    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, step: int, total: int, loss: float) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", desc=self.label or None, dynamic_ncols=True, leave=False)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if step >= total:
            self.close()

    def write(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(msg)  # above the bar, which is redrawn beneath it

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_params(args) -> int:
    spec = _spec_from_args(args).resolved()
    trainable, total = runs.count_parameters(spec)
    out = {"model_name": spec.model_name, "method": spec.method, "capacity": spec.capacity,
           "trainable_params": trainable, "total_params": total,
           "trainable_pct": round(100 * trainable / total, 4) if total else 0.0}
    print(json.dumps(out) if args.json else
          f"{spec.method} ({spec.capacity}) on {spec.model_name}: {trainable:,} trainable of {total:,} "
          f"parameters ({out['trainable_pct']}%)")
    return 0


def cmd_sweep(args) -> int:

    base = _spec_from_args(args, method="lora")
    for name in args.methods:
        methods.get_method(name)
    specs = runs.sweep_specs(base, args.methods, args.seeds,
                             knobs={methods.KNOB_RANK: args.lora_ranks, methods.KNOB_TOKENS: args.virtual_tokens},
                             zero_shot=not args.no_zero_shot)
    preflight_all(specs)
    store = _store(args)
    todo = runs.pending(store, specs)
    print(f"sweep: {len(specs)} runs in the grid, {len(specs) - len(todo)} already stored, {len(todo)} to run")
    if args.enqueue:
        queued = jobs.submit(store, todo).run_ids
        if queued:
            jobs.ensure_worker(store)
            print(f"enqueued {len(queued)} runs; the worker processes them one at a time")
        return 0
    failures = 0
    for i, spec in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {spec.task} {spec.label()}", flush=True)
        run_id = _create_running(store, spec.resolved())
        failures += execution.execute(spec, store, run_id, progress=_progress_bar(f"[{i}/{len(todo)}]")) != 0
    return 1 if failures else 0


def cmd_results(args) -> int:

    df = analysis.load_df(_store(args), task=args.task)
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", indent=1))
    else:
        cols = ["run_id", "task", "method", "capacity", "seed", "status", "trainable_params", "accuracy", "f1",
                "rougeL", "train_runtime", "train_samples_per_second", "peak_memory_mb", "adapter_bytes"]
        if df.empty:
            print("no runs yet: python -m peftcompare train --model_name builtin:tiny-t5 ...")
        else:
            import pandas as pd

            def cell(v, col) -> str:  # counts as integers, measurements to 4 decimals, nothing as a dash
                if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
                    return "—"
                if col in ("capacity", "seed", "trainable_params", "adapter_bytes") or isinstance(v, int):
                    return str(int(v))
                return f"{v:.4f}" if isinstance(v, float) else str(v)

            shown = pd.DataFrame({c: [cell(v, c) for v in df[c].astype(object)] for c in cols})
            with pd.option_context("display.max_rows", 500, "display.width", 220, "display.max_columns", 30):
                print(shown.to_string(index=False))
    return 0


def cmd_plot(args) -> int:

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = analysis.load_df(_store(args))
    df.to_csv(out / "results.csv", index=False)
    written = [out / "results.csv"]
    for task in tasks.task_names():
        path = out / f"curve_{task}.png"
        plotting.curve_png(df, task, tasks.get_task(task).metric, path, x=args.x)
        written.append(path)
    for p in written:
        print(p)
    return 0


def cmd_compare(args) -> int:

    engine = comparing.open_engine(_store(args))
    text = args.text if args.text is not None else sys.stdin.read()
    result = engine.compare(text, args.run_ids, task=args.task, model_name=args.model_name)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        for col in result["columns"]:
            print(f"== {col['label']} ({col['latency_ms']:.0f} ms)\n{col['output']}"
                  + (f"  (p={col['probability']:.3f})" if col.get("probability") is not None else ""))
    return 0


def cmd_disagreements(args) -> int:

    if args.csv and not Path(args.csv).expanduser().resolve().parent.is_dir():
        raise UserError(f"csv: the folder of {args.csv} does not exist")
    engine = comparing.open_engine(_store(args), precision=args.precision)
    bar = _answers_bar() if sys.stderr.isatty() else None
    try:
        result = disagreements.find(engine, args.run_ids, args.n, task=args.task, model_name=args.model_name,
                                    progress=bar, use_cache=not args.no_cache)
    finally:
        if bar is not None:
            bar.close()
    if args.csv:
        Path(args.csv).expanduser().write_text(disagreements.to_csv(result), encoding="utf-8")
    print(json.dumps(result, indent=1) if args.json else disagreements.report(result, top=args.top))
    return 0


def _answers_bar():
    """progress(done, total) on a tqdm bar counting answers (examples x columns)."""
    from tqdm.auto import tqdm

    state = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="answer", desc="disagreements", dynamic_ncols=True, leave=False)
        state["bar"].update(done - state["bar"].n)

    progress.close = lambda: state["bar"].close() if "bar" in state else None
    return progress


def cmd_worker(args) -> int:

    return jobs.run_worker(_store(args), idle_exit=args.idle_exit)


def cmd_enqueue(args) -> int:

    store = _store(args)
    out = jobs.submit(store, [_spec_from_args(args)])  # the queue's one policy: limits, duplicates, preflight
    for _, twin in out.skipped:
        print(f"not queued: an identical run is already {twin['status']} ({twin['run_id']})", file=sys.stderr)
    if out.run_ids and not args.no_worker:
        jobs.ensure_worker(store)
    for run_id in out.run_ids:
        print(run_id)
    return 0


def cmd_cancel(args) -> int:
    store = _store(args)
    for run_id in args.run_ids:
        print(f"{run_id}: {'cancel requested' if store.request_cancel(run_id) else 'not queued or running'}")
    return 0


def cmd_delete(args) -> int:
    store = _store(args)
    for run_id in args.run_ids:
        runs.delete_run(store, run_id)
        print(f"deleted {run_id}")
    return 0


def cmd_export(args) -> int:

    store = _store(args)
    run_ids = args.run_ids or ([r["run_id"] for r in store.list_runs(status=("completed",))] if args.all else [])
    manifest = bundle.export_bundle(store, run_ids, args.out)
    n_files = sum(len(e["files"]) for e in manifest["runs"])
    print(f"exported {len(manifest['runs'])} runs ({n_files} adapter files) to {args.out}")
    return 0


def cmd_import(args) -> int:

    for run_id in bundle.import_bundle(_store(args), args.bundle, overwrite=args.overwrite):
        print(f"imported {run_id}")
    return 0


def cmd_check(args) -> int:

    problems = integrity.check(_store(args), fix=args.fix)
    if args.json:
        print(json.dumps([p.__dict__ for p in problems], indent=1))
    else:
        for p in problems:
            print(p.line())
        print(f"{len(problems)} problem(s)" + (" (repairable ones repaired)" if args.fix and problems else "")
              if problems else "store is consistent")
    return 1 if problems else 0


def cmd_versions(args) -> int:
    for name, version in system.versions().items():
        print(f"{name} {version}")
    return 0


def cmd_preset(args) -> int:

    p = presets.get_preset(args.name)
    offline = args.offline
    if not offline and not system.hub_reachable():
        offline = True
        print(f"the Hugging Face Hub is unreachable: running {p.name} on {p.offline_model} instead of "
              f"{', '.join(p.models)}", file=sys.stderr)
    specs = presets.preset_specs(p.name, offline, args.quick)
    if args.dry_run:
        for s in specs:
            print(f"{s.model_name} {s.dataset} {s.label()} lr {s.learning_rate}")
        return 0
    preflight_all(specs)
    store = _store(args)
    if args.enqueue:
        out = presets.enqueue_preset(store, p.name, offline, quick=args.quick)
        if out["run_ids"]:
            jobs.ensure_worker(store)
        print(f"{p.title}: {len(out['run_ids'])} runs enqueued, {out['skipped']} already stored or queued")
        return 0
    todo = runs.pending(store, specs)
    print(f"{p.title}: {len(specs)} runs, {len(specs) - len(todo)} already stored, {len(todo)} to run")
    failures = 0
    for i, spec in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {spec.model_name} {spec.dataset} {spec.label()}", flush=True)
        run_id = _create_running(store, spec.resolved())
        failures += execution.execute(spec, store, run_id, progress=_progress_bar(f"[{i}/{len(todo)}]")) != 0
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m peftcompare", description="Compare PEFT methods on FLAN-T5.")
    p.add_argument("--home", default=None, help="Store home (results/ and adapters/). Default: "
                   "$PEFTCOMPARE_HOME, else the repository.")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, fn, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--home", default=argparse.SUPPRESS, help="Store home (see above).")
        sp.set_defaults(fn=fn)
        return sp

    t = cmd("train", cmd_train, "Train one adapter and store it with its result.")
    _add_spec_args(t)
    t.add_argument("--spec", help="A spec JSON file (flags override its fields).")
    t.add_argument("--run_id", help=argparse.SUPPRESS)
    z = cmd("zero-shot", cmd_train, "Evaluate the untouched model and store it as a baseline run.")
    _add_spec_args(z, skip=("method", "capacity"))
    z.set_defaults(run_id=None, spec=None)
    e = cmd("enqueue", cmd_enqueue, "Queue one run for the background worker (what the app does).")
    _add_spec_args(e)
    e.add_argument("--no_worker", action="store_true", help="Do not start a worker.")
    e.set_defaults(spec=None)
    pa = cmd("params", cmd_params, "Trainable and total parameters, without training.")
    _add_spec_args(pa)
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(spec=None)
    s = cmd("sweep", cmd_sweep, "Run the grid methods x capacities x seeds, skipping stored specs.")
    _add_spec_args(s, skip=("method", "capacity", "seed"))
    s.add_argument("--methods", nargs="+", default=["lora", "prefix", "prompt"])
    s.add_argument("--lora_ranks", nargs="+", type=int, default=[4, 8, 16, 32])
    s.add_argument("--virtual_tokens", nargs="+", type=int, default=[10, 20, 50, 100])
    s.add_argument("--seeds", nargs="+", type=int, default=[42])
    s.add_argument("--no_zero_shot", action="store_true", help="Do not add the zero-shot baseline run.")
    s.add_argument("--enqueue", action="store_true", help="Queue the runs for the worker instead of running "
                   "them here.")
    s.set_defaults(spec=None)
    r = cmd("results", cmd_results, "One row per run.")
    r.add_argument("--format", choices=["table", "csv", "json"], default="table")
    r.add_argument("--task", default=None)
    pl = cmd("plot", cmd_plot, "results.csv and one capacity-vs-score curve per task.")
    pl.add_argument("--out", default="plots")
    pl.add_argument("--x", choices=["capacity", "trainable_params"], default="capacity")
    c = cmd("compare", cmd_compare, "One text through zero-shot and each given adapter, side by side.")
    c.add_argument("run_ids", nargs="*", help="Adapter run ids (default: none, zero-shot only).")
    c.add_argument("--text", default=None, help="Input text (default: stdin).")
    c.add_argument("--task", default=None, help="Task of the zero-shot column (default: the adapters').")
    c.add_argument("--model_name", default=None, help="Base model (default: the adapters').")
    c.add_argument("--json", action="store_true")
    dg = cmd("disagreements", cmd_disagreements, "Zero-shot and the given adapters over N validation examples: "
             "each one's score and the examples where they disagree (cached in results/cache/).")
    dg.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="Adapter run ids (one task, one base model).")
    dg.add_argument("--n", type=int, default=200, help="Validation examples, the first N (default: 200, at "
                    "most the set's size).")
    dg.add_argument("--task", default=None, help="Task (default: the adapters').")
    dg.add_argument("--model_name", default=None, help="Base model (default: the adapters').")
    dg.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="Inference precision (default: auto, as the app).")
    dg.add_argument("--top", type=int, default=10, help="Disagreements to print (default: 10).")
    dg.add_argument("--csv", default=None, help="Also write one row per example to this CSV file.")
    dg.add_argument("--no_cache", action="store_true", help="Run the models even when a cached result exists.")
    dg.add_argument("--json", action="store_true", help="Print the whole result as JSON.")
    w = cmd("worker", cmd_worker, "Process the run queue (the app starts this by itself).")
    w.add_argument("--idle_exit", type=float, default=30.0, help="Exit after this many idle seconds.")
    ca = cmd("cancel", cmd_cancel, "Cancel queued or running runs.")
    ca.add_argument("run_ids", nargs="+")
    d = cmd("delete", cmd_delete, "Delete finished runs and their adapters.")
    d.add_argument("run_ids", nargs="+")

    pr = cmd("preset", cmd_preset, "Run (or --enqueue) every run of a reference experiment.")
    pr.add_argument("name", choices=list(PRESETS), help="The preset.")
    pr.add_argument("--offline", action="store_true", help="Use the built-in tiny model of the preset's "
                    "family instead of the Hub model (automatic when the Hub is unreachable).")
    pr.add_argument("--quick", action="store_true", help="A few examples, one epoch, one capacity per method.")
    pr.add_argument("--enqueue", action="store_true", help="Queue the runs for the worker instead of running "
                    "them here.")
    pr.add_argument("--dry_run", action="store_true", help="Only list the runs.")
    ex = cmd("export", cmd_export, "Write runs and their adapters to a zip bundle (with sha256 checksums).")
    ex.add_argument("run_ids", nargs="*", help="Runs to export.")
    ex.add_argument("--all", action="store_true", help="Export every completed run.")
    ex.add_argument("--out", required=True, help="The .zip file to write.")
    im = cmd("import", cmd_import, "Add the runs of a bundle to the store, after validating all of it.")
    im.add_argument("bundle", help="A .zip made by export.")
    im.add_argument("--overwrite", action="store_true", help="Replace runs that already exist.")
    ck = cmd("check", cmd_check, "Check the store: records against adapters, leftovers, stale runs (exit 1 "
             "when something is wrong).")
    ck.add_argument("--fix", action="store_true", help="Mark stale runs interrupted, remove orphan staging "
                    "directories (adapters without a record are only reported).")
    ck.add_argument("--json", action="store_true")
    cmd("versions", cmd_versions, "Python, platform and library versions (what every run record keeps).")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except (ValueError, FileNotFoundError) as exc:  # user mistakes: one line, no traceback
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
