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

from peftcompare.core import methods, packs, tasks
from peftcompare.core.spec import RunSpec, spec_fields, with_offline_recipe
from peftcompare.service import (
    analysis,
    bundle,
    comparing,
    disagreements,
    execution,
    integrity,
    jobs,
    peft_mc,
    plotting,
    presets,
    report,
    runs,
    significance,
    summary,
    system,
)
from peftcompare.service.presets import PRESETS
from peftcompare.service.runs import preflight, preflight_all
from peftcompare.service.store import PACK_ALONE, Store

EXIT_USAGE = 2


class UserError(ValueError):
    pass


def _add_spec_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for f in spec_fields():
        if f.name in skip:
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        # argparse %-formats help texts: a literal "10%" in a field's help must reach it as "10%%"
        text = f"{f.metadata.get('help', '')} (default: {f.default!r})".replace("%", "%%")
        p.add_argument(f"--{f.name}", type=_typed(kind, f.name), default=None, help=text)


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
    if args.run_id:  # started by the queue worker: the records exist already (several: a pack)
        claimed = [_claimed(store, run_id) for run_id in args.run_id]
        specs, run_ids = [r["spec"] for r in claimed], [r["run_id"] for r in claimed]
        if len(claimed) > 1:
            codes = execution.execute_pack(specs, store, run_ids, progress=_progress_bar(f"pack of {len(specs)}"))
            return max(codes)
        alone = packs.alone_reason(specs[0]) if claimed[0].get("pack_id") == PACK_ALONE else ""
        return execution.execute(specs[0], store, run_ids[0], progress=_progress_bar(specs[0].label()),
                                 alone=alone)
    spec = preflight(_spec_from_args(args, **({"method": methods.BASELINE} if args.command == "zero-shot" else {})))
    run_id = _create_running(store, spec)
    return execution.execute(spec, store, run_id, progress=_progress_bar(spec.label()))


def _claimed(store, run_id: str) -> dict:
    """A run the worker claimed for this process (queued or running), now owned by this process."""
    run = store.get(run_id)
    if run is None:
        raise UserError(f"run_id: no run {run_id}")
    if run["status"] == "queued":
        store.transition(run_id, "running", ("queued",), pid=os.getpid())
    elif run["status"] != "running":
        raise UserError(f"run_id: run {run_id} is {run['status']}, not queued")
    store.update(run_id, pid=os.getpid())
    return store.get(run_id)


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
    if not 1 <= args.pack <= 16:
        raise UserError(f"pack: train between 1 and 16 runs together, got {args.pack}")
    if args.learning_rates and args.learning_rate is not None:
        raise UserError("learning_rates: give --learning_rate (one rate for every method) or --learning_rates "
                        "(a search), not both")
    for lr in args.learning_rates or []:
        if not lr > 0:
            raise UserError(f"learning_rates: each must be > 0, got {lr:g}")
    # without a rate on the command line each method trains at its own (its registration's, or the recipe's)
    specs = runs.sweep_specs(base, args.methods, args.seeds,
                             knobs={methods.KNOB_RANK: args.lora_ranks, methods.KNOB_TOKENS: args.virtual_tokens},
                             zero_shot=not args.no_zero_shot, learning_rates=args.learning_rates,
                             method_rates=args.learning_rate is None)
    preflight_all(specs)
    store = _store(args)
    todo = runs.pending(store, specs)
    print(f"sweep: {len(specs)} runs in the grid, {len(specs) - len(todo)} already stored, {len(todo)} to run")
    if args.enqueue:
        queued = jobs.submit(store, todo, pack=args.pack).run_ids
        if queued:
            jobs.ensure_worker(store)
            how = f"in packs of up to {args.pack}" if args.pack > 1 else "one at a time"
            print(f"enqueued {len(queued)} runs; the worker processes them {how}")
        return 0
    return _run_all(store, todo, args.pack)


def _run_all(store, todo: list, pack: int = 1) -> int:
    """Run specs here, one at a time or (pack > 1) in packs that train together; exit 1 if any failed."""
    failures, done = 0, 0
    for group in packs.plan_packs(todo, pack):
        where = f"[{done + 1}/{len(todo)}]" if len(group) == 1 else f"[{done + 1}-{done + len(group)}/{len(todo)}]"
        for spec in group:
            print(f"{where} {spec.task} {spec.label()}", flush=True)
        run_ids = [_create_running(store, spec.resolved()) for spec in group]
        if len(group) > 1:
            codes = execution.execute_pack(group, store, run_ids, progress=_progress_bar(where))
        else:
            alone = packs.alone_reason(group[0]) if pack > 1 else ""
            codes = [execution.execute(group[0], store, run_ids[0], progress=_progress_bar(where), alone=alone)]
        failures += sum(c != 0 for c in codes)
        done += len(group)
    return 1 if failures else 0


def cmd_results(args) -> int:

    if args.format == "peft-mc":
        return _results_peft_mc(args)
    if args.out:
        raise UserError("out: only --format peft-mc writes files (the other formats print)")
    if args.summary:
        return _results_summary(args)
    df = analysis.load_df(_store(args), task=args.task)
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", indent=1))
    else:
        cols = ["run_id", "task", "method", "capacity", "seed", "status", "trainable_params", "learning_rate",
                "selected_on", "accuracy", "f1", "rougeL", "train_runtime", "train_samples_per_second",
                "peak_memory_mb", "adapter_bytes"]
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


def _results_peft_mc(args) -> int:
    if args.summary:
        raise UserError("summary: --format peft-mc writes one file per run, not a summary")
    if not args.out:
        raise UserError("out: --format peft-mc needs --out DIR (one JSON file per run is written there)")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {args.out} is a file, not a folder")
    written = peft_mc.write(_store(args).list_runs(task=args.task), out)
    print(f"wrote {len(written)} result files in PEFT method_comparison's layout to {out}")
    return 0


def _results_summary(args) -> int:
    rows = summary.summarize(_store(args).list_runs(status=("completed",), task=args.task), args.task)
    df = summary.to_frame(rows)
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(json.dumps(rows, indent=1, default=str))
    elif df.empty:
        print("no completed runs yet")
    else:
        import pandas as pd

        def num(v, digits=4):
            return "—" if v is None or v != v else f"{v:.{digits}f}"

        shown = pd.DataFrame({
            "task": df["task"], "method": df["label"], "model": df["model_name"], "seeds": df["n_seeds"],
            "mean": [num(v) for v in df["mean"]],
            "95% CI": [f"[{num(lo)}, {num(hi)}]" if lo == lo and lo is not None else "—"
                       for lo, hi in zip(df["ci_low"], df["ci_high"])],
            "lr": ["—" if v is None or v != v else f"{v:g}" for v in df["learning_rate"]],
            "selected_on": df["selected_on"], "budget": df["budget"], "warning": df["warning"]})
        with pd.option_context("display.max_rows", 500, "display.width", 220, "display.max_columns", 30):
            print(shown.to_string(index=False))
        print("mean over seeds of the validation metric, with a two-sided 95 % Student t-interval (n - 1 degrees "
              "of freedom); per method and capacity the learning rate with the best mean selection score")
    return 0


def cmd_significance(args) -> int:
    if args.resamples < 100:
        raise UserError("resamples: at least 100")
    result = significance.test(_store(args), args.a, args.b, task=args.task, metric=args.metric,
                               resamples=args.resamples)
    print(json.dumps(result, indent=1) if args.json else significance.describe(result))
    return 0


def cmd_report(args) -> int:
    tasks.get_task(args.task)
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"out: the folder of {args.out} does not exist")
    html_text = report.build_for_store(_store(args), args.task)
    out.write_text(html_text, encoding="utf-8")
    print(out)
    return 0


def cmd_plot(args) -> int:

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = _store(args)
    df = analysis.load_df(store)
    df.to_csv(out / "results.csv", index=False)
    written = [out / "results.csv"]
    # the curves draw, per method and capacity, the learning rate selected on dev (results.csv keeps every run)
    shown = {r["run_id"] for r in summary.selected_runs(store.list_runs(status=("completed",)))}
    for task in tasks.task_names():
        path = out / f"curve_{task}.png"
        plotting.curve_png(df[df["run_id"].isin(shown)], task, tasks.get_task(task).metric, path, x=args.x)
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
                                    progress=bar, use_cache=not args.no_cache, stored=not args.no_cache)
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
    """The queue's worker: per_gpu slots on each GPU, or one."""
    slots = jobs.worker_slots(args.per_gpu)  # a bad per_gpu: one line (ValueError), as every user mistake
    if args.per_gpu > 1 and slots == [None]:
        print("no GPU here: the worker trains one run at a time (a CPU run uses every core)", flush=True)
    elif len(slots) > 1:
        print(f"worker: {args.per_gpu} runs at a time on each of {len(slots) // args.per_gpu} GPU(s)", flush=True)
    return jobs.run_worker(_store(args), idle_exit=args.idle_exit, slots=slots)


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


def cmd_methods(args) -> int:
    listing = methods.catalog()
    if args.json:
        print(json.dumps(listing))
        return 0
    short = {"seq2seq": "s2s", "causal": "causal", "encoder": "enc"}
    for family, rows in _by(listing["methods"], "family").items():
        print(f"{family}: {methods.METHOD_FAMILIES[family]}")
        for r in rows:
            works = " ".join(short[f] if ok else "-" * len(short[f]) for f, ok in r["works_on"].items())
            knob = f"{r['knob']}: {', '.join(map(str, r['capacities']))}" if r["knob"] else "no capacity knob"
            print(f"  {r['name']:<17} {r['title']:<26} {works:<15} {knob}")
    print("not available (cannot train an encoder-decoder):")
    for r in listing["refused"]:
        print(f"  {r['name']:<17} {r['reason']}")
    return 0


def _by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


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
    t.add_argument("--run_id", action="append", help=argparse.SUPPRESS)
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
    s.add_argument("--learning_rates", nargs="+", type=float, default=None, metavar="LR",
                   help="A learning-rate search: every method x capacity x seed trains at each rate; per method and "
                   "capacity the rate with the best dev score averaged over seeds is the one results --summary, "
                   "the curves and the report show. Without it (and without --learning_rate) each method trains "
                   "at its own default rate.")
    s.add_argument("--no_zero_shot", action="store_true", help="Do not add the zero-shot baseline run.")
    s.add_argument("--enqueue", action="store_true", help="Queue the runs for the worker instead of running "
                   "them here.")
    s.add_argument("--pack", type=_typed(int, "pack"), default=1, metavar="K",
                   help="Train (and evaluate) up to K runs together in one pass over the shared frozen model (LoRA "
                   "and rsLoRA across ranks, prompt and prefix tuning at one length, with the same data, model and "
                   "budget, on an encoder-decoder model; the others train alone, and their record says why). "
                   "Default 1: one at a time.")
    s.set_defaults(spec=None)
    r = cmd("results", cmd_results, "One row per run; --summary: one row per (task, method, capacity).")
    r.add_argument("--format", choices=["table", "csv", "json", "peft-mc"], default="table",
                   help="peft-mc: one JSON file per run in PEFT method_comparison's layout, written to --out.")
    r.add_argument("--task", default=None)
    r.add_argument("--summary", action="store_true", help="One row per (task, method, capacity): seeds, mean, "
                   "95 %% t-interval over seeds, the learning rate selected and where it was selected.")
    r.add_argument("--out", default=None, help="The folder --format peft-mc writes to.")
    sg = cmd("significance", cmd_significance, "A paired bootstrap test of A against B on the same validation "
             "examples, from the answers every run stored (no model runs).")
    sg.add_argument("a", metavar="A", help="A run id, or a group: method or method:capacity (all seeds of it).")
    sg.add_argument("b", metavar="B", help="The same for the other side.")
    sg.add_argument("--task", default=None, help="The task of the groups (needed when a method has runs of "
                    "several tasks).")
    sg.add_argument("--metric", default=None, help="The metric (default: the task's primary one).")
    sg.add_argument("--resamples", type=int, default=significance.RESAMPLES, help="Bootstrap resamples "
                    "(default: %(default)s).")
    sg.add_argument("--json", action="store_true")
    rp = cmd("report", cmd_report, "One self-contained HTML experiment report of a task (opens offline).")
    rp.add_argument("--task", required=True, choices=list(tasks.TASKS))
    rp.add_argument("--out", default="report.html", help="The HTML file to write (default: report.html).")
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
    dg.add_argument("--no_cache", action="store_true", help="Run the models even when a cached result or the "
                    "runs' stored evaluation answers exist (by default, when every column stored its answers to "
                    "these examples, no model runs).")
    dg.add_argument("--json", action="store_true", help="Print the whole result as JSON.")
    w = cmd("worker", cmd_worker, "Process the run queue (the app starts this by itself).")
    w.add_argument("--idle_exit", type=float, default=30.0, help="Exit after this many idle seconds.")
    w.add_argument("--per_gpu", type=_typed(int, "per_gpu"), default=1, metavar="N",
                   help="Runs (or packs) trained at once on each GPU, each in its own process (default: 1). "
                        "A small model's run leaves most of a GPU idle; several keep it busy. Ignored without a "
                        "GPU.")
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
    me = cmd("methods", cmd_methods, "Every method by family: its capacity knob and grid, the model families it "
             "trains (seq2seq, causal, encoder), and the PEFT types that are not available.")
    me.add_argument("--json", action="store_true")
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
