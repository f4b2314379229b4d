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

from peftcompare.core import methods
from peftcompare.core.spec import RunSpec
from peftcompare.core.tasks import Task, get_task
from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.engine import fastops, method_hooks, models, runtime
from peftcompare.engine.adapters import save_adapter, trainable_state
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
    n = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (isinstance(module, torch.nn.Linear) and not any(p.requires_grad for p in params)
                and not any(id(p) in shared for p in params)):
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
    model: Any = None  # the model that trains (the method applied), on the device
    trainable: int = 0
    total: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 0  # 0 for a method that does not train (zero-shot)
    fingerprint: str = ""  # of the data the run saw
    versions: dict = field(default_factory=dict)

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
    torch.manual_seed(spec.seed)
    t_load = time.perf_counter()
    _load_data_and_model(s)
    _apply_method(s)
    _record_fast_paths(s, time.perf_counter() - t_load)
    s.fingerprint, s.versions = s.data.fingerprint(), runtime.versions()
    if s.main:
        _announce(s)
    return s


def _load_data_and_model(s: Session) -> None:
    s.data = data_mod.load_task_data(s.spec)
    if s.data.notice and s.main:
        s.reporter.log(s.data.notice)
    s.loaded = models.load_model(s.spec.model_name)
    if s.task.generates and not s.family.generative:
        raise ValueError(f"task: {s.spec.model_name} is an encoder classifier and cannot summarize")
    root = s.reporter.cache_dir()
    cache = root / "tokenized" if root is not None else None
    tokenizer = s.loaded.tokenizer
    s.train_feats = data_mod.tokenized(s.spec, s.family, tokenizer, s.data.train, True, cache)
    s.eval_feats = data_mod.tokenized(s.spec, s.family, tokenizer, s.data.validation, False, cache)
    if hasattr(s.family, "attach_labels"):
        s.family.attach_labels(s.loaded, s.data.label_words)


def _apply_method(s: Session) -> None:
    """Count the steps (the method may schedule by them), apply the method, move it to the device."""
    batches_per_epoch = math.ceil(len(s.train_feats) / s.spec.per_device_train_batch_size)
    s.steps_per_epoch = max(1, batches_per_epoch // s.world)
    s.total_steps = s.steps_per_epoch * s.spec.num_train_epochs if s.method.trains else 0
    # looked up in this module at call time: tests/test_faults.py replaces it in a child process
    s.model = prepare_model(s.spec, s.loaded, s.total_steps)
    s.trainable, s.total = models.count_parameters(s.model)
    s.model.to(s.device)


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
                   f"parameters, {len(s.train_feats)} train / {len(s.eval_feats)} eval examples, "
                   f"{s.precision} on {s.device}")


# -- fit ---------------------------------------------------------------------------------------------
@dataclass
class Fitted:
    """What training produced: the model in its best epoch's state, and the numbers of the record."""
    model: Any
    metrics: dict = field(default_factory=dict)  # of the best epoch (zero-shot: the one evaluation)
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    seen: int = 0  # training examples, all processes together


@dataclass
class _Tally:
    """Step rows waiting for the next flush. Losses stay on the device until then: a sync per step would
    stall a GPU's queue."""
    step: int = 0
    seen: int = 0
    loss: float = float("nan")  # the last loss synced, shown by the progress bar
    pending: list = field(default_factory=list)  # (step, epoch, loss tensor, learning rate)
    started: float = field(default_factory=time.perf_counter)
    last_flush: float = field(default_factory=time.perf_counter)


def fit(s: Session) -> Fitted:
    """Train epoch by epoch, evaluating after each and keeping the best epoch's state. Raises Cancelled."""
    if not s.method.trains:  # zero-shot: the base model is evaluated once
        metrics, secs = _evaluate(s, s.model)
        return Fitted(s.model, metrics, [{"epoch": 0, **_public(metrics)}], eval_time=secs)
    model, optimizer, scheduler = _optimizer(s)
    lengths = [len(f["input_ids"]) + len(f.get("labels", ())) for f in s.train_feats]
    fitted, tally, metric = Fitted(model), _Tally(), s.task.metric
    best_metric, best_state = -math.inf, None
    for epoch in range(s.spec.num_train_epochs):
        t_epoch = time.perf_counter()
        epoch_loss, n_batches = _train_epoch(s, model, optimizer, scheduler, lengths, epoch, tally)
        fitted.train_time += time.perf_counter() - t_epoch
        s.accelerator.wait_for_everyone()
        metrics, secs = _evaluate(s, model)
        fitted.eval_time += secs
        entry = {"epoch": epoch + 1, "train_loss": epoch_loss / max(1, n_batches),
                 "train_seconds": round(time.perf_counter() - t_epoch - secs, 3), "eval_seconds": round(secs, 3),
                 **_public(metrics)}
        fitted.epochs.append(entry)
        if s.main:
            s.reporter.epoch(fitted.epochs)
            s.reporter.log(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f} {metric} {metrics[metric]:.4f}")
        if metrics[metric] > best_metric:
            best_metric, fitted.best_epoch, fitted.metrics = metrics[metric], epoch + 1, metrics
            best_state = trainable_state(s.accelerator.unwrap_model(model))
    fitted.seen = tally.seen
    fitted.model = s.accelerator.unwrap_model(model)
    fitted.model.load_state_dict(best_state, strict=False)
    return fitted


def _public(metrics: dict) -> dict:
    """The metrics an epoch entry shows: `_`-prefixed keys (predictions kept for the record) stay out."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def _evaluate(s: Session, model) -> tuple[dict, float]:
    t0 = time.perf_counter()
    metrics = eval_mod.evaluate(s.accelerator.unwrap_model(model), s.family, s.loaded.tokenizer, s.spec,
                                s.data.validation, s.eval_feats, s.data.label_words, s.device, s.dtype)
    return metrics, time.perf_counter() - t0


def _optimizer(s: Session):
    """AdamW with linear warm-up then linear decay to 0, prepared (with the model) for data parallelism."""
    spec, total = s.spec, s.total_steps
    optimizer = torch.optim.AdamW([p for p in s.model.parameters() if p.requires_grad], lr=spec.learning_rate,
                                  weight_decay=spec.weight_decay, fused=True)  # one kernel, not a dozen per tensor
    warmup = int(total * spec.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else
        max(0.0, (total - step) / max(1, total - warmup)))
    model, optimizer = s.accelerator.prepare(s.model, optimizer)
    return model, optimizer, scheduler


def _train_epoch(s: Session, model, optimizer, scheduler, lengths: list[int], epoch: int,
                 tally: _Tally) -> tuple[float, int]:
    """One epoch of this process's share of the batches; returns (summed loss, batches)."""
    model.train()
    batches = data_mod.length_grouped_batches(lengths, s.spec.per_device_train_batch_size, s.spec.seed + epoch)
    batches = batches[: s.steps_per_epoch * s.world][s.rank::s.world]
    epoch_loss = 0.0
    for idx in batches:
        loss = _step(s, model, optimizer, scheduler, idx, tally.step)
        tally.step += 1
        tally.seen += len(idx) * s.world
        tally.pending.append((tally.step, round(tally.step / s.steps_per_epoch, 4), loss.detach(),
                              scheduler.get_last_lr()[0]))
        now = time.perf_counter()
        if now - tally.last_flush >= FLUSH_SECONDS or tally.step in (1, s.total_steps) or idx is batches[-1]:
            epoch_loss += _flush(s, tally, now)
        s.reporter.tick(tally.step, s.total_steps, tally.loss)
    return epoch_loss, len(batches)


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
    eta = elapsed / tally.step * (s.total_steps - tally.step) if tally.step else None
    if s.main:
        s.reporter.steps(rows, tally.step, s.total_steps, tally.loss, eta)
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
    adapter_dir, adapter_bytes = _save(s, fitted.model, record) if s.method.trains else (None, None)
    record["peak_memory_mb"] = round(runtime.peak_memory_mb(s.device), 1)
    s.reporter.completed(record, adapter_dir, adapter_bytes)
    if adapter_dir:  # run.json gets the final peak memory as well
        (Path(adapter_dir) / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    metric, final = s.task.metric, fitted.metrics
    s.reporter.log(f"done: {metric} {final[metric]:.4f} (best epoch {fitted.best_epoch}); "
                   f"{record['train_samples_per_second'] or 0:.1f} train samples/s; run {s.reporter.run_id}")
    return record


def _record(s: Session, fitted: Fitted) -> dict:
    spec, train_time = s.spec, fitted.train_time
    return {"run_id": s.reporter.run_id, "spec": spec.to_dict(), "metrics": fitted.metrics, "epochs": fitted.epochs,
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
    save_adapter(model, s.spec, staging, record)  # looked up at call time: tests/test_faults.py replaces it
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
