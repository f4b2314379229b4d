"""train(spec, store) -> run record. A plain loop you can read top to bottom.

Fast paths (all recorded in the run): dynamic padding with length-grouped batches, denormals flushed,
bf16 autocast where the hardware has it, cached tokenization, threads sized to the machine, label
scoring in one forward pass for classification, length-sorted batched generation with the KV cache, and
fastops' rewrites (pooled dropout, fused GELU, T5 norm and AdamW, LoRA inputs left in bf16).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from peftcompare.engine import data as data_mod
from peftcompare.engine import evaluate as eval_mod
from peftcompare.core import methods
from peftcompare.engine import models, runtime
from peftcompare.core.spec import RunSpec
from peftcompare.core.tasks import get_task
from peftcompare.engine.adapters import save_adapter, trainable_state
from peftcompare.service.store import Store

FLUSH_SECONDS = 2.0  # how often progress, loss and the cancel flag go through the store


class Cancelled(Exception):
    pass


def _log(msg: str, progress=None) -> None:
    """A log line; through the terminal's progress bar when there is one (so the bar is not torn apart)."""
    write = getattr(progress, "write", None)
    if write is not None:
        write(msg)
    else:
        print(msg, flush=True)


def prepare_model(spec: RunSpec, loaded: models.Loaded, total_steps: int = 0):
    """Wrap the base model with the spec's method; returns the model that trains."""
    method = methods.get_method(spec.method)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    if method.make_config is not None:
        from peft import get_peft_model

        config = method.make_config(spec, model, loaded.tokenizer, loaded.family, total_steps=total_steps)
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise ValueError(f"method: {spec.method} cannot be applied to {spec.model_name} "
                             f"({str(exc).splitlines()[0][:200]})") from None
    elif method.prepare is not None:
        method.prepare(spec, model, loaded.family)
    from peftcompare.engine import fastops

    fastops.swap_dropout(model)  # after get_peft_model, so that LoRA's own dropout is swapped too
    for encoder in getattr(model, "prompt_encoder", {}).values():
        if hasattr(encoder, "mlp_head") or hasattr(encoder, "lstm_head"):  # P-tuning's reparametrisation
            _outside_autocast(encoder)
    return model


def _outside_autocast(module) -> None:
    """Run a module in fp32 even under autocast. P-tuning's prompt encoder is evaluated once at save time,
    in fp32, and PEFT stores only its output: under bf16 autocast the metric recorded during training and
    the one the saved adapter gives would differ in the fourth digit."""
    import torch

    forward = module.forward

    def fp32_forward(*args, **kwargs):
        device = next(module.parameters()).device.type
        with torch.autocast(device, enabled=False):
            return forward(*args, **kwargs)

    module.forward = fp32_forward


def cast_frozen_linears(model, dtype) -> int:
    """Store frozen Linear weights in the autocast dtype: the same numbers autocast would compute with,
    without re-casting every frozen weight on every use (its cast cache only keeps weights that train)."""
    import torch

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


def run_training(spec: RunSpec, store: Store, run_id: str, progress=None) -> dict:
    """Train (or only evaluate, for zero-shot) one run and write its record. Raises on failure."""
    import torch

    spec = spec.resolved()
    method = methods.get_method(spec.method)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = str(accelerator.device)
    # data-parallel CPU processes get "cpu:0": they need their share of the threads all the same
    fast = runtime.configure_cpu(world) if device.startswith("cpu") else {"threads": torch.get_num_threads()}
    precision, dtype = runtime.resolve_precision(spec.precision, device)
    torch.manual_seed(spec.seed)

    t_load = time.perf_counter()
    task_data = data_mod.load_task_data(spec)
    if task_data.notice and main:
        _log(task_data.notice, progress)
    loaded = models.load_model(spec.model_name)
    family = loaded.family
    if get_task(spec.task).generates and not family.generative:
        raise ValueError(f"task: {spec.model_name} is an encoder classifier and cannot summarize")
    cache = store.cache_dir / "tokenized"
    train_feats = data_mod.tokenized(spec, family, loaded.tokenizer, task_data.train, True, cache)
    eval_feats = data_mod.tokenized(spec, family, loaded.tokenizer, task_data.validation, False, cache)
    if hasattr(family, "attach_labels"):
        family.attach_labels(loaded, task_data.label_words)

    batches_per_epoch = math.ceil(len(train_feats) / spec.per_device_train_batch_size)
    steps_per_epoch = max(1, batches_per_epoch // world)
    total_steps = steps_per_epoch * spec.num_train_epochs if method.trains else 0
    model = prepare_model(spec, loaded, total_steps)
    trainable, total = models.count_parameters(model)
    model.to(device)
    frozen_cast = cast_frozen_linears(model, dtype) if dtype is not None else 0
    from peftcompare.engine import fastops

    fast.update(loaded.kernels)
    fast["pooled_dropout"] = fastops.count_pooled(model) if device.startswith("cpu") else 0
    fast["lora_inputs_uncast"] = fastops.lora_inputs_in_autocast_dtype(model) if dtype is not None else 0
    fast.update({"precision": precision, "dynamic_padding": True, "length_grouped_batches": True,
                 "label_scoring": get_task(spec.task).scores_labels, "tokenization_cache": True,
                 "sorted_generation_kv_cache": get_task(spec.task).generates,
                 "frozen_linears_in_autocast_dtype": frozen_cast, "fused_adamw": True,
                 "world_size": world, "load_seconds": round(time.perf_counter() - t_load, 3)})
    fingerprint, versions = task_data.fingerprint(), runtime.versions()
    if main:
        store.update(run_id, trainable_params=trainable, total_params=total, precision=precision, device=device,
                     data_fingerprint=fingerprint, data_source=task_data.source,
                     versions_json=versions, total_steps=total_steps, fast_paths_json=fast,
                     world_size=world, spec_json=spec.to_json())
        _log(f"{spec.label()} on {spec.model_name}: {trainable:,} trainable of {total:,} parameters, "
             f"{len(train_feats)} train / {len(eval_feats)} eval examples, {precision} on {device}", progress)

    def run_eval() -> tuple[dict, float]:
        t0 = time.perf_counter()
        m = eval_mod.evaluate(accelerator.unwrap_model(model), family, loaded.tokenizer, spec,
                              task_data.validation, eval_feats, task_data.label_words, device, dtype)
        return m, time.perf_counter() - t0

    epochs: list[dict] = []
    best_metric, best_state, best_epoch = -math.inf, None, 0
    train_time = eval_time = 0.0
    seen = 0
    metric_name = get_task(spec.task).metric
    if method.trains:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate,
                                      weight_decay=spec.weight_decay, fused=True)  # one kernel, not a dozen per tensor
        warmup = int(total_steps * spec.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else
            max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
        model, optimizer = accelerator.prepare(model, optimizer)
        lengths = [len(f["input_ids"]) + len(f.get("labels", ())) for f in train_feats]
        step, pending, last_flush, t_start = 0, [], time.perf_counter(), time.perf_counter()
        loss_value = float("nan")
        for epoch in range(spec.num_train_epochs):
            model.train()
            batches = data_mod.length_grouped_batches(lengths, spec.per_device_train_batch_size,
                                                      spec.seed + epoch)
            batches = batches[: steps_per_epoch * world][rank::world]
            epoch_loss, t_epoch = 0.0, time.perf_counter()
            for idx in batches:
                batch = {k: v.to(device) for k, v in
                         family.collate([train_feats[i] for i in idx], loaded.tokenizer).items()}
                with eval_mod.autocast(device, dtype):
                    loss = model(**batch).loss
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                if method.on_step is not None:  # e.g. AdaLoRA's rank allocator, told every step
                    method.on_step(accelerator.unwrap_model(model), step)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seen += len(idx) * world
                # losses stay on the device until a flush: a sync per step would stall a GPU's queue
                pending.append((step, round(step / steps_per_epoch, 4), loss.detach(), scheduler.get_last_lr()[0]))
                now = time.perf_counter()
                if now - last_flush >= FLUSH_SECONDS or step in (1, total_steps) or idx is batches[-1]:
                    rows = [(s_, e_, float(l_), lr_) for (s_, e_, _, lr_), l_ in
                            zip(pending, torch.stack([p_[2] for p_ in pending]).float().tolist())]
                    epoch_loss += sum(r[2] for r in rows)
                    loss_value = rows[-1][2]
                    elapsed = now - t_start
                    eta = elapsed / step * (total_steps - step) if step else None
                    if main:
                        store.add_steps(run_id, rows)
                        store.update(run_id, step=step, progress=step / max(1, total_steps),
                                     current_loss=loss_value, eta_s=eta, heartbeat=time.time())
                    pending, last_flush = [], now
                    if store.cancel_requested(run_id):
                        raise Cancelled()
                if progress:  # every step; the loss shown is the last one synced
                    progress(step, total_steps, loss_value)
            train_time += time.perf_counter() - t_epoch
            accelerator.wait_for_everyone()
            metrics, secs = run_eval()
            eval_time += secs
            entry = {"epoch": epoch + 1, "train_loss": epoch_loss / max(1, len(batches)),
                     "train_seconds": round(time.perf_counter() - t_epoch - secs, 3), "eval_seconds": round(secs, 3),
                     **{k: v for k, v in metrics.items() if not k.startswith("_")}}
            epochs.append(entry)
            if main:
                store.update(run_id, epochs_json=epochs, heartbeat=time.time())
                _log(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f} {metric_name} {metrics[metric_name]:.4f}",
                     progress)
            if metrics[metric_name] > best_metric:
                best_metric, best_epoch = metrics[metric_name], epoch + 1
                best_state, best_metrics = trainable_state(accelerator.unwrap_model(model)), metrics
        model = accelerator.unwrap_model(model)
        model.load_state_dict(best_state, strict=False)
        final = best_metrics
    else:
        final, eval_time = run_eval()
        epochs = [{"epoch": 0, **{k: v for k, v in final.items() if not k.startswith("_")}}]
    if not main:
        return {}

    record = {"run_id": run_id, "spec": spec.to_dict(), "metrics": final, "epochs": epochs,
              "best_epoch": best_epoch, "trainable_params": trainable, "total_params": total,
              "train_runtime": round(train_time, 3), "eval_runtime": round(eval_time, 3),
              "train_samples_per_second": round(seen / train_time, 3) if train_time else None,
              "precision": precision, "device": device, "versions": versions,
              "data_fingerprint": fingerprint, "data_source": task_data.source,
              "label_words": task_data.label_words, "fast_paths": fast,
              "notes": method.notes(spec, loaded) if method.notes else []}
    adapter_bytes, adapter_dir = None, None
    if method.trains:
        staging = store.staging_path(run_id)
        save_adapter(model, spec, staging, record)
        adapter_bytes = sum(p.stat().st_size for p in staging.iterdir()
                            if p.suffix in (".safetensors", ".bin"))
        adapter_dir = str(store.commit_adapter(run_id, staging))
    record["peak_memory_mb"] = round(runtime.peak_memory_mb(device), 1)
    store.transition(run_id, "completed", ("running",), metrics_json=final, epochs_json=epochs,
                     train_runtime=record["train_runtime"], eval_runtime=record["eval_runtime"],
                     train_samples_per_second=record["train_samples_per_second"],
                     peak_memory_mb=record["peak_memory_mb"], adapter_bytes=adapter_bytes, adapter_dir=adapter_dir,
                     finished_at=time.time(), progress=1.0, eta_s=0.0, heartbeat=time.time())
    if adapter_dir:  # run.json gets the final peak memory as well
        (Path(adapter_dir) / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    _log(f"done: {metric_name} {final[metric_name]:.4f} (best epoch {best_epoch}); "
         f"{record['train_samples_per_second'] or 0:.1f} train samples/s; run {run_id}", progress)
    return record


def failure_reason(exc: BaseException) -> str:
    """One line for the run record; the traceback goes to the log."""
    import errno

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


def execute(spec: RunSpec, store: Store, run_id: str, progress=None) -> int:
    """Run a claimed run to a final status. Returns a process exit code (0 ok, 1 failed, 3 cancelled)."""

    try:
        run_training(spec, store, run_id, progress)
        return 0
    except Cancelled:
        store.transition(run_id, "cancelled", ("running",), finished_at=time.time(), error="cancelled by the user")
        _log("cancelled", progress)
        return 3
    except KeyboardInterrupt:
        store.transition(run_id, "cancelled", ("running",), finished_at=time.time(), error="interrupted (Ctrl-C)")
        return 130
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the record
        reason = failure_reason(exc)
        traceback.print_exc(file=sys.stdout)
        try:
            store.transition(run_id, "failed", ("running", "queued"), finished_at=time.time(), error=reason)
        finally:
            _log(f"failed: {reason}", progress)
        return 1
    finally:
        try:
            store.discard_staging(run_id, os.getpid())
        except OSError:
            pass
