"""One run, in three steps read top to bottom: `setup(spec, reporter) -> Session`, `fit(session) -> Fitted`,
`finish(session, fitted) -> record`; `run(spec, reporter)` does all three.

The loop never opens a store: what it publishes (setup, step rows, epochs, log lines, the record) and what
it asks (cancel? where to cache, where to save the adapter) goes through a Reporter (engine/reporting.py),
so the same code trains under the queue, in a notebook, or beside other runs in one process.

Fast paths (all recorded in the run): dynamic padding with length-grouped batches, denormals flushed,
bf16 autocast where the hardware has it, cached tokenization, threads sized to the machine, label
scoring in one forward pass for classification, length-sorted batched generation with the KV cache, and
fastops' rewrites (pooled dropout, fused GELU, T5 norm and AdamW, LoRA inputs left in bf16).
"""
from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.core.tasks import Task, get_task
from peftcompare.engine import budget as budget_mod
from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import fastops, method_hooks, models, provenance, runtime
from peftcompare.engine.adapters import save_adapter, stored_params, trainable_state
from peftcompare.engine.reporting import LogReporter, Reporter, StepRow

FLUSH_SECONDS = 2.0  # how often step rows, progress and the cancel flag go through the reporter


class Cancelled(Exception):
    """The reporter asked the run to stop (checked at each flush)."""


def prepare_model(spec: RunSpec, loaded: models.Loaded, total_steps: int = 0):
    """Wrap the base model with the spec's method; returns the model that trains."""
    method = methods.get_method(spec.method)
    if method.trains:
        method.check_family(loaded.family.name, spec.model_name)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    if method.make_config is not None:
        config = method.make_config(spec, model, loaded.tokenizer, loaded.family, total_steps=total_steps)
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise ValueError(f"method: {spec.method} cannot be applied to {spec.model_name} "
                             f"({str(exc).splitlines()[0][:200]})") from None
    elif method.prepare is not None:
        method.prepare(spec, model, loaded.family)
        method_hooks.prepare(method, spec, model, loaded.family)  # e.g. prefix_full's attention prefixes
    fastops.swap_dropout(model)  # after get_peft_model, so that LoRA's own dropout is swapped too
    for encoder in getattr(model, "prompt_encoder", {}).values():
        if hasattr(encoder, "mlp_head") or hasattr(encoder, "lstm_head"):  # P-tuning's reparametrisation
            _outside_autocast(encoder)
    return model


def _outside_autocast(module) -> None:
    """Run a module in fp32 even under autocast. P-tuning's prompt encoder is evaluated once at save time,
    in fp32, and PEFT stores only its output: under bf16 autocast the metric recorded during training and
    the one the saved adapter gives would differ in the fourth digit."""
    forward = module.forward

    def fp32_forward(*args, **kwargs):
        device = next(module.parameters()).device.type
        with torch.autocast(device, enabled=False):
            return forward(*args, **kwargs)

    module.forward = fp32_forward


def cast_frozen_linears(model, dtype) -> int:
    """Store frozen Linear weights in the autocast dtype: the same numbers autocast would compute with,
    without re-casting every frozen weight on every use (its cast cache only keeps weights that train)."""
    # a weight tied to an embedding (GPT-2's lm_head) is also read outside autocast: leave it alone
    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False)}
    # a PEFT layer that reads its base weight itself (DoRA's norm, HiRA's and GLoRA's elementwise products,
    # ...) would read it rounded, and score otherwise than its reloaded adapter: only plain LoRA's base
    # layers, which are only ever called, are cast. PEFT layers that subclass nn.Linear themselves (VB-LoRA,
    # FRoD, ...) are never cast whole: .to() would round their trained tensors too
    read = {id(m.base_layer) for m in model.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")
            and not (isinstance(m, LoraLayer) and not any(getattr(m, "use_dora", {}).values()))}
    n = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (isinstance(module, torch.nn.Linear) and not isinstance(module, BaseTunerLayer)
                and not any(p.requires_grad for p in module.parameters())
                and not any(id(p) in shared for p in params) and id(module) not in read):
            module.to(dtype)
            n += 1
    return n


# -- setup -------------------------------------------------------------------------------------------
@dataclass
class Session:
    """Everything a run needs once it is set up: built by `setup`, read by `fit` and `finish`."""
    spec: RunSpec  # resolved
    reporter: Reporter
    method: methods.Method
    task: Task
    accelerator: Accelerator
    device: str
    precision: str
    dtype: torch.dtype | None
    fast: dict[str, Any]  # the fast paths on, recorded in the run
    data: data_mod.TaskData | None = None
    loaded: models.Loaded | None = None
    train_feats: list[dict] = field(default_factory=list)
    eval_feats: list[dict] = field(default_factory=list)
    dev_feats: list[dict] = field(default_factory=list)  # the dev split's (selection=dev)
    loss_feats: list[dict] = field(default_factory=list)  # the selection split with references (selection_metric=loss)
    model: Any = None  # the model that trains (the method applied), on the device
    trainable: int = 0
    total: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 0  # 0 for a method that does not train (zero-shot)
    fingerprint: str = ""  # of the data the run saw
    model_fingerprint: str = ""  # of the base model's weights, before the method touched them
    versions: dict = field(default_factory=dict)
    clock: budget_mod.Clock | None = None  # the training budget: steps, seconds and FLOPs spent
    flops: budget_mod.FlopModel | None = None
    example_flops: list[float] = field(default_factory=list)  # training FLOPs of each training example
    example_tokens: list[int] = field(default_factory=list)
    started: float = 0.0  # perf_counter when the session opened (load time)
    # the adapter's name inside a model that holds several (a LoRA pack); None: the model holds this run's only
    adapter_name: str | None = None

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def family(self):
        return self.loaded.family


def setup(spec: RunSpec, reporter: Reporter | None = None) -> Session:
    """Resolve the spec, pick device and precision, load data and model, apply the method, announce the run."""
    s = open_session(spec, reporter)
    _apply_method(s)
    ready(s)
    return s


def open_session(spec: RunSpec, reporter: Reporter | None = None, loaded: models.Loaded | None = None) -> Session:
    """The session with its data and base model loaded (`loaded`: a base model shared with other runs of a
    pack), its method not yet applied."""
    spec = spec.resolved()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    device = str(accelerator.device)
    # data-parallel CPU processes get "cpu:0": they need their share of the threads all the same
    fast = (runtime.configure_cpu(accelerator.num_processes) if device.startswith("cpu")
            else {"threads": torch.get_num_threads()})
    precision, dtype = runtime.resolve_precision(spec.precision, device)
    s = Session(spec, reporter or LogReporter(), methods.get_method(spec.method), get_task(spec.task),
                accelerator, device, precision, dtype, fast)
    s.started = time.perf_counter()
    torch.manual_seed(spec.seed)  # anything drawn while loading is drawn the same way every time
    _load_data_and_model(s, loaded)
    return s


def ready(s: Session) -> None:
    """After the method is applied: the fast paths, fingerprints and versions, and the run announced."""
    _record_fast_paths(s, time.perf_counter() - s.started)
    s.fingerprint, s.versions = s.data.fingerprint(), runtime.versions()
    if s.main:
        _announce(s)


def _load_data_and_model(s: Session, loaded: models.Loaded | None = None) -> None:
    s.data = data_mod.load_task_data(s.spec)
    if s.data.notice and s.main:
        s.reporter.log(s.data.notice)
    s.loaded = loaded if loaded is not None else models.load_model(s.spec.model_name)
    if s.task.generates and not s.family.generative:
        raise ValueError(f"task: {s.spec.model_name} is an encoder classifier and cannot summarize")
    root = s.reporter.cache_dir()
    cache = root / "tokenized" if root is not None else None
    tokenizer = s.loaded.tokenizer
    s.train_feats = data_mod.tokenized(s.spec, s.family, tokenizer, s.data.train, True, cache)
    s.eval_feats = data_mod.tokenized(s.spec, s.family, tokenizer, s.data.validation, False, cache)
    if s.spec.selection == "dev" and s.method.trains:
        if not s.data.dev:
            raise ValueError("selection: the training data is too small to carve a dev split from; give more "
                             "training data or use selection=validation")
        s.dev_feats = data_mod.tokenized(s.spec, s.family, tokenizer, s.data.dev, False, cache)
    if s.spec.selection_metric == "loss" and s.method.trains:
        split = s.data.dev if s.spec.selection == "dev" else s.data.validation
        s.loss_feats = data_mod.tokenized(s.spec, s.family, tokenizer, split, True, cache)
    s.model_fingerprint = provenance.model_fingerprint(s.loaded.model)
    if hasattr(s.family, "attach_labels"):
        s.family.attach_labels(s.loaded, s.data.label_words)


def _apply_method(s: Session) -> None:
    """Count the steps (the method may schedule by them), apply the method, move it to the device."""
    plan_steps(s)
    # the adapter's initialisation is drawn here, under the run's seed, whatever loading consumed before: a
    # packed run (engine/packing.py) draws its adapter the same way and starts from the same weights
    torch.manual_seed(s.spec.seed)
    s.model = prepare_model(s.spec, s.loaded, s.total_steps)  # looked up at call time: tests/test_faults.py
    measure(s, s.model)
    s.model.to(s.device)


def plan_steps(s: Session) -> None:
    """Steps per epoch, the budget's clock, and the steps the budget buys for a method that schedules by them
    (a FLOPs budget priced on the frozen base model; the adapter's own cost is added by `measure`)."""
    batches_per_epoch = math.ceil(len(s.train_feats) / s.spec.per_device_train_batch_size)
    s.steps_per_epoch = max(1, batches_per_epoch // s.world)
    s.clock = budget_mod.Clock(s.spec, s.steps_per_epoch)
    base = budget_mod.flop_model(s.loaded.model, s.family, s.spec)
    base = budget_mod.FlopModel(base.n_source, 0, base.n_target, 0, base.virtual_tokens)
    s.total_steps = s.clock.planned_steps(sum(base.example(f) for f in s.train_feats)) if s.method.trains else 0


def measure(s: Session, model) -> None:
    """Parameter counts and the FLOPs of each training example, of `model` (the run's method applied; a pack
    measures a shapes-only copy with this run's adapter alone)."""
    s.trainable, s.total = models.count_parameters(model)
    s.flops = budget_mod.flop_model(model, s.family, s.spec)
    s.example_flops = [s.flops.example(f) for f in s.train_feats]
    s.example_tokens = [len(f["input_ids"]) + s.flops.virtual_tokens
                        + sum(1 for t in f.get("labels", ()) if t != -100) for f in s.train_feats]
    if s.method.trains:
        s.total_steps = s.clock.planned_steps(sum(s.example_flops))


def _record_fast_paths(s: Session, load_seconds: float) -> None:
    frozen_cast = cast_frozen_linears(s.model, s.dtype) if s.dtype is not None else 0
    fast = s.fast
    fast.update(s.loaded.kernels)
    fast["pooled_dropout"] = fastops.count_pooled(s.model) if s.device.startswith("cpu") else 0
    fast["lora_inputs_uncast"] = fastops.lora_inputs_in_autocast_dtype(s.model) if s.dtype is not None else 0
    fast.update({"precision": s.precision, "dynamic_padding": True, "length_grouped_batches": True,
                 "label_scoring": s.task.scores_labels, "tokenization_cache": True,
                 "sorted_generation_kv_cache": s.task.generates,
                 "frozen_linears_in_autocast_dtype": frozen_cast, "fused_adamw": True,
                 "world_size": s.world, "load_seconds": round(load_seconds, 3)})


def _announce(s: Session) -> None:
    s.reporter.started({"trainable_params": s.trainable, "total_params": s.total, "precision": s.precision,
                        "device": s.device, "data_fingerprint": s.fingerprint,
                        "data_source": s.data.source, "versions": s.versions,
                        "total_steps": s.total_steps, "fast_paths": s.fast, "world_size": s.world,
                        "spec": s.spec})
    s.reporter.log(f"{s.spec.label()} on {s.spec.model_name}: {s.trainable:,} trainable of {s.total:,} "
                   f"parameters, {len(s.train_feats)} train / {len(s.eval_feats)} eval examples"
                   + (f" / {len(s.dev_feats)} dev examples (selection on dev)" if s.dev_feats else "")
                   + (f", budget {s.spec.budget_value:g} {s.spec.budget}" if s.spec.budget != "epochs" else "")
                   + f", {s.precision} on {s.device}")


# -- fit ---------------------------------------------------------------------------------------------
@dataclass
class Fitted:
    """What training produced: the model in its chosen state, and the numbers of the record."""
    model: Any
    metrics: dict = field(default_factory=dict)  # validation, of the chosen state (zero-shot: the one evaluation)
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    seen: int = 0  # training examples, all processes together
    tokens: int = 0  # training tokens (padding left out), all processes together
    # how the state was chosen: on which split, over how many examples, its score there
    selection: dict = field(default_factory=dict)


@dataclass
class _Tally:
    """Step rows waiting for the next flush. Losses stay on the device until then: a sync per step would
    stall a GPU's queue."""
    step: int = 0
    seen: int = 0
    tokens: int = 0
    loss: float = float("nan")  # the last loss synced, shown by the progress bar
    pending: list = field(default_factory=list)  # (step, epoch, loss tensor, learning rate)
    started: float = field(default_factory=time.perf_counter)
    last_flush: float = field(default_factory=time.perf_counter)


def fit(s: Session) -> Fitted:
    """Train until the budget is spent (epochs, steps, seconds or FLOPs), scoring the selection split after
    every pass over the data and when the budget ends, and keep the best state. With selection=dev that split
    is the dev split and the validation split is evaluated once, on the chosen state; with
    selection=validation it is the validation split itself (the original protocol). Raises Cancelled."""
    if not s.method.trains:  # zero-shot: the base model is evaluated once
        metrics, secs = _evaluate(s, s.model, s.data.validation, s.eval_feats)
        return Fitted(s.model, metrics, [{"epoch": 0, **_public(metrics)}], eval_time=secs,
                      selection={"on": "none", "reason": "nothing trains: evaluated once"})
    model, optimizer, scheduler = _optimizer(s)
    run = Progress(s, model, scheduler)
    while not s.clock.spent():
        model.train()
        batches = run.epoch_batches()
        run.begin_epoch()
        try:
            for idx in batches:
                if _budget_spent(s):
                    break
                loss = _step(s, model, optimizer, scheduler, idx, run.tally.step)
                run.account(idx, loss, last=idx is batches[-1])
        finally:
            run.pause()
        s.accelerator.wait_for_everyone()
        run.end_epoch()
    return run.conclude()


class Progress:
    """One run's bookkeeping through training, whoever runs its steps (`fit` alone, engine/packing.py beside
    other runs): step rows, flushes and the cancel flag, the budget's clock, the epoch entries, the state chosen
    on the selection split, and the final evaluation."""

    def __init__(self, s: Session, model, scheduler, state=None):
        self.s, self.model, self.scheduler = s, model, scheduler
        # (model) -> the tensors that train: a pack holds other runs' adapters too and names this one's
        self.state = state or (lambda m: trainable_state(s.accelerator.unwrap_model(m)))
        self.lengths = [len(f["input_ids"]) + len(f.get("labels", ())) for f in s.train_feats]
        self.fitted, self.tally = Fitted(model), _Tally()
        self.on_dev = s.spec.selection == "dev"
        self.by_loss = s.spec.selection_metric == "loss"  # chosen by the split's loss: no generation per epoch
        self.split, self.examples, self.feats = (("dev", s.data.dev, s.dev_feats) if self.on_dev else
                                                 ("validation", s.data.validation, s.eval_feats))
        self.best_metric, self.best_state, self.epoch = -math.inf, None, 0
        self.epoch_loss, self.done, self.t_epoch, self.t_trained = 0.0, 0, 0.0, 0.0

    def epoch_batches(self) -> list[list[int]]:
        """This process's share of this epoch's length-grouped batches (the run's seed orders them)."""
        s = self.s
        batches = data_mod.length_grouped_batches(self.lengths, s.spec.per_device_train_batch_size,
                                                  s.spec.seed + self.epoch)
        return batches[: s.steps_per_epoch * s.world][s.rank::s.world]

    def begin_epoch(self) -> None:
        self.epoch_loss, self.done, self.t_epoch = 0.0, 0, time.perf_counter()
        self.s.clock.start()

    def account(self, idx: list[int], loss, last: bool) -> None:
        """After one optimizer step on the examples `idx`: counts, the budget, the step row, a flush when one
        is due (raises Cancelled when the reporter asks), the progress bar."""
        s, tally = self.s, self.tally
        tally.step += 1
        tally.seen += len(idx) * s.world
        tally.tokens += sum(s.example_tokens[i] for i in idx) * s.world
        s.clock.step(sum(s.example_flops[i] for i in idx) * s.world)  # the other ranks' batches alike
        self.done += 1
        tally.pending.append((tally.step, round(tally.step / s.steps_per_epoch, 4), loss.detach(),
                              self.scheduler.get_last_lr()[0]))
        now = time.perf_counter()
        if now - tally.last_flush >= FLUSH_SECONDS or tally.step in (1, s.total_steps) or last:
            self.epoch_loss += _flush(s, tally, now)
        s.reporter.tick(tally.step, _reported_total(s, tally), tally.loss)

    def pause(self) -> None:
        """The epoch's training stretch ends: its last rows flushed, the clock stopped."""
        try:
            if self.tally.pending:  # the budget ended inside the epoch: its last rows are this epoch's too
                self.epoch_loss += _flush(self.s, self.tally, time.perf_counter())
        finally:
            self.s.clock.pause()
            self.t_trained = time.perf_counter() - self.t_epoch
            self.fitted.train_time += self.t_trained

    def selection_pass(self) -> tuple[dict, float]:
        """(metrics, seconds) of the selection split on the model as it stands: its loss (selection_metric=loss)
        or its primary metric. A pack (engine/packing.py) makes this pass for all its runs at once instead."""
        s = self.s
        if self.by_loss:
            t0 = time.perf_counter()
            metrics = eval_mod.mean_loss(s.accelerator.unwrap_model(self.model), s.family, s.loaded.tokenizer,
                                         s.loss_feats, s.spec.per_device_eval_batch_size, s.device, s.dtype)
            return metrics, time.perf_counter() - t0
        return _evaluate(s, self.model, self.examples, self.feats, generate_protocol=False)

    def end_epoch(self, scored: tuple[dict, float] | None = None) -> None:
        """Score the selection split (or take `scored`, the pass a pack made), record the epoch, keep the state
        if it is the best so far."""
        s, model = self.s, self.model
        metric = "eval_loss" if self.by_loss else s.task.metric
        metrics, secs = scored or self.selection_pass()
        self.fitted.eval_time += secs
        entry = {"epoch": self.epoch + 1, "train_loss": self.epoch_loss / max(1, self.done),
                 "train_seconds": round(self.t_trained, 3), "eval_seconds": round(secs, 3),
                 **_epoch_scores(metrics, "dev_" if self.on_dev else "")}
        if s.spec.budget != "epochs":  # where in the budget this evaluation stands
            entry.update({"step": self.tally.step, "train_seconds_total": round(s.clock.train_seconds(), 3),
                          "train_flops": s.clock.flops})
        self.fitted.epochs.append(entry)
        if s.main:
            s.reporter.epoch(self.fitted.epochs)
            s.reporter.log(f"epoch {self.epoch + 1}: loss {entry['train_loss']:.4f} "
                           f"{'dev ' if self.on_dev else ''}{metric} {metrics[metric]:.4f}")
        score = -metrics[metric] if self.by_loss else metrics[metric]  # a loss is better lower
        if score > self.best_metric:
            self.best_metric, self.fitted.best_epoch, self.fitted.metrics = score, self.epoch + 1, metrics
            self.best_state = self.state(model)
        self.epoch += 1

    @property
    def final_pass(self) -> str:
        """What the chosen state still needs: "validation" (scored once on it: selection on dev, or by loss) or
        "generated" (the original protocol's generate-and-parse scoring, its other scores taken per epoch)."""
        return "validation" if self.on_dev or self.by_loss else "generated"

    def restore(self):
        """The chosen state back in the model; returns the model."""
        model = self.s.accelerator.unwrap_model(self.model)
        model.load_state_dict(self.best_state, strict=False)
        return model

    def conclude(self, scored: tuple | None = None) -> Fitted:
        """The best state back in the model, its final pass (scored: the pass a pack made for it, as
        (metrics, seconds) or for "generated" (metrics, per-example fields, seconds)), and how the state was
        chosen."""
        s, fitted = self.s, self.fitted
        fitted.seen, fitted.tokens = self.tally.seen, self.tally.tokens
        fitted.model = self.restore()
        if self.final_pass == "validation":
            fitted.metrics, secs = scored or _evaluate(s, fitted.model, s.data.validation, s.eval_feats)
        else:
            secs = _add_generated_protocol(s, fitted, scored)
        fitted.eval_time += secs
        fitted.selection = {"on": self.split, "examples": len(self.examples),
                            "metric": "loss" if self.by_loss else s.task.metric,
                            "score": -self.best_metric if self.by_loss else self.best_metric,
                            "best_epoch": fitted.best_epoch}
        return fitted


def _epoch_scores(metrics: dict, prefix: str) -> dict:
    """An epoch entry's scores: on the dev split named dev_<metric> (never mistaken for a validation score);
    eval_samples (the examples scored, what the app's time estimates read) and the split named as they are."""
    public = _public(metrics)
    return {**{(k if k == "eval_samples" else prefix + k): v for k, v in public.items()},
            **({"eval_split": "dev"} if prefix else {})}


def _add_generated_protocol(s: Session, fitted: Fitted, scored: tuple | None = None) -> float:
    if scored is None:
        t0 = time.perf_counter()
        extra, per = eval_mod.generated_protocol(fitted.model, s.family, s.loaded.tokenizer, s.spec,
                                                 s.data.validation, s.eval_feats, s.data.label_words, s.device,
                                                 s.dtype)
        secs = time.perf_counter() - t0
    else:
        extra, per, secs = scored
    if not extra:
        return 0.0
    fitted.metrics = {**fitted.metrics, **extra}
    if "_per_example" in fitted.metrics:
        fitted.metrics["_per_example"] = {**fitted.metrics["_per_example"], **per}
    return secs


def _public(metrics: dict) -> dict:
    """The metrics an epoch entry shows: `_`-prefixed keys (predictions kept for the record) stay out."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def _evaluate(s: Session, model, examples, feats, generate_protocol: bool = True) -> tuple[dict, float]:
    t0 = time.perf_counter()
    metrics = eval_mod.evaluate(s.accelerator.unwrap_model(model), s.family, s.loaded.tokenizer, s.spec,
                                examples, feats, s.data.label_words, s.device, s.dtype,
                                generate_protocol=generate_protocol)
    return metrics, time.perf_counter() - t0


def _optimizer(s: Session):
    """make_optimizer for the model's trainable tensors, prepared (with the model) for data parallelism."""
    optimizer, scheduler = make_optimizer(s, [p for p in s.model.parameters() if p.requires_grad])
    model, optimizer = s.accelerator.prepare(s.model, optimizer)
    return model, optimizer, scheduler


def make_optimizer(s: Session, params: list):
    """AdamW with linear warm-up then linear decay to 0 over `params` (a pack gives each run its own).
    Budgets of seconds or FLOPs do not know their number of steps: their schedule follows the budget's
    progress (0 to 1) instead of the step count."""
    spec, total = s.spec, s.total_steps
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay,
                                  fused=True)  # one kernel, not a dozen per tensor
    warmup = int(total * spec.warmup_ratio)
    if spec.budget in ("seconds", "flops"):
        clock, w = s.clock, spec.warmup_ratio

        def factor(step):
            p = max(clock.progress(), 1 / max(1, total))
            return min(1.0, p / w) if p < w else max(0.0, (1 - p) / max(1e-9, 1 - w))
    else:
        def factor(step):
            return (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _budget_spent(s: Session) -> bool:
    """Whether the budget is spent, the same answer on every process (a clock is each process's own)."""
    spent = s.clock.spent()
    if s.world > 1 and s.spec.budget in ("seconds", "flops"):
        flag = torch.tensor([1.0 if spent else 0.0], device=s.device)
        spent = bool(s.accelerator.reduce(flag, reduction="sum").item() > 0)
    return spent


def _reported_total(s: Session, tally: _Tally) -> int:
    """The steps the progress bar and the ETA count to: planned, or for a budget of seconds or FLOPs the steps
    the budget's progress so far points to."""
    if s.spec.budget in ("seconds", "flops") and tally.step:
        progress = s.clock.progress()
        if progress > 0:
            return max(tally.step, math.ceil(tally.step / progress))
    return max(s.total_steps, tally.step)


def _step(s: Session, model, optimizer, scheduler, idx: list[int], step: int):
    """One optimizer step on the examples `idx`; returns the loss, still on the device."""
    collated = s.family.collate([s.train_feats[i] for i in idx], s.loaded.tokenizer)
    batch = {k: v.to(s.device) for k, v in collated.items()}
    with eval_mod.autocast(s.device, s.dtype):
        loss = model(**batch).loss
    s.accelerator.backward(loss)
    s.accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    if s.method.on_step is not None:  # e.g. AdaLoRA's rank allocator, told every step
        s.method.on_step(s.accelerator.unwrap_model(model), step)
    optimizer.zero_grad(set_to_none=True)
    return loss


def _flush(s: Session, tally: _Tally, now: float) -> float:
    """Sync the pending losses in one go, report the rows (main process), then ask whether to stop.
    Returns the rows' summed loss; raises Cancelled when the reporter says so."""
    losses = torch.stack([p[2] for p in tally.pending]).float().tolist()
    rows: list[StepRow] = [(step, epoch, float(loss), lr) for (step, epoch, _, lr), loss in
                           zip(tally.pending, losses)]
    tally.loss = rows[-1][2]
    elapsed = now - tally.started
    total = _reported_total(s, tally)
    eta = elapsed / tally.step * (total - tally.step) if tally.step else None
    if s.main:
        s.reporter.steps(rows, tally.step, total, tally.loss, eta)
    tally.pending, tally.last_flush = [], now
    if s.reporter.cancel_requested():
        raise Cancelled()
    return sum(r[2] for r in rows)


# -- finish ------------------------------------------------------------------------------------------
def finish(s: Session, fitted: Fitted) -> dict:
    """The run record, the adapter saved and committed through the reporter, the completed report.
    Only the main process writes; the others return {}."""
    if not s.main:
        return {}
    record = _record(s, fitted)
    # every example's answer goes to the reporter (the store keeps it compressed), not into the adapter's files
    on_disk = {k: v for k, v in record.items() if k != "per_example"}
    adapter_dir, adapter_bytes = _save(s, fitted.model, on_disk) if s.method.trains else (None, None)
    if adapter_dir:  # what the adapter stores can differ from what trained (shared projections, indices)
        record["stored_params"] = on_disk["stored_params"] = stored_params(adapter_dir)
    record["peak_memory_mb"] = on_disk["peak_memory_mb"] = round(runtime.peak_memory_mb(s.device), 1)
    s.reporter.completed(record, adapter_dir, adapter_bytes)
    if adapter_dir:  # run.json gets the final peak memory as well
        (Path(adapter_dir) / "run.json").write_text(json.dumps(on_disk, indent=2, sort_keys=True, default=str))
    metric, final = s.task.metric, fitted.metrics
    chosen = f" on {fitted.selection['on']}" if fitted.selection.get("on") in ("dev", "validation") else ""
    s.reporter.log(f"done: {metric} {final[metric]:.4f} (best epoch {fitted.best_epoch}{chosen}); "
                   f"{record['train_samples_per_second'] or 0:.1f} train samples/s; run {s.reporter.run_id}")
    return record


def _record(s: Session, fitted: Fitted) -> dict:
    spec, train_time = s.spec, fitted.train_time
    metrics = {k: v for k, v in fitted.metrics.items() if k != "_per_example"}
    budget = (s.clock.record(s.flops, fitted.tokens, len(s.train_feats)) if s.method.trains else
              {"kind": "none", "steps": 0, "train_seconds": 0.0, "train_flops": 0.0})
    return {"run_id": s.reporter.run_id, "spec": spec.to_dict(), "metrics": metrics, "epochs": fitted.epochs,
            "selection": fitted.selection, "budget": budget, "total_steps": s.clock.steps if s.method.trains else 0,
            "model_fingerprint": s.model_fingerprint,
            "per_example": {"validation": fitted.metrics.get("_per_example")},
            "best_epoch": fitted.best_epoch, "trainable_params": s.trainable, "total_params": s.total,
            "train_runtime": round(train_time, 3), "eval_runtime": round(fitted.eval_time, 3),
            "train_samples_per_second": round(fitted.seen / train_time, 3) if train_time else None,
            "precision": s.precision, "device": s.device, "versions": s.versions,
            "data_fingerprint": s.fingerprint, "data_source": s.data.source,
            "label_words": s.data.label_words, "fast_paths": s.fast,
            "notes": s.method.notes(spec, s.loaded) if s.method.notes else []}


def _save(s: Session, model, record: dict) -> tuple[Path | None, int | None]:
    """Write the adapter into the reporter's staging dir and commit it; (None, None) when it keeps none."""
    staging = s.reporter.staging_dir()
    if staging is None:
        return None, None
    # looked up at call time: tests/test_faults.py replaces it
    save_adapter(model, s.spec, staging, record, adapter_name=s.adapter_name)
    size = weights_bytes(staging)
    return s.reporter.commit(staging), size


def weights_bytes(adapter_dir: Path) -> int:
    """The size of an adapter's tensors (its config, record and card left out)."""
    return sum(p.stat().st_size for p in adapter_dir.iterdir() if p.suffix in (".safetensors", ".bin"))


def run(spec: RunSpec, reporter: Reporter | None = None) -> dict:
    """Train (or only evaluate, for zero-shot) one run; returns its record ({} on a non-main process).
    Without a reporter it logs to stderr and keeps nothing on disk. Raises on failure, Cancelled on cancel."""
    session = setup(spec, reporter)
    return finish(session, fit(session))


def failure_reason(exc: BaseException) -> str:
    """One line for the run record; the traceback goes to the log."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = str(exc).lower()
    # CUDA says "out of memory"; the CPU allocator says "can't allocate memory" (errno 12)
    if isinstance(exc, MemoryError) or "out of memory" in low or "can't allocate memory" in low:
        return f"out of memory: {text[:300]}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full: no space left on device while writing the run"
    if isinstance(exc, ValueError):
        return text[:500]
    return f"{type(exc).__name__}: {text[:400]}"
