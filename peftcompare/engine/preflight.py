"""Everything that can be wrong with a spec, found before a run record exists.

The CLI (`train`, `sweep`, `enqueue`, `preset`), the queue and the Train page all call `preflight`, so a
mistake is refused the same way everywhere: one line naming the problem, nothing written to the store.
The checks need the model's config and its module names, never its weights: the method is applied to a
shapes-only copy of the model (meta device), which is what `params` counts on too.
"""
from __future__ import annotations

from functools import lru_cache

from peftcompare.core import methods, tasks
from peftcompare.core.spec import RunSpec
from peftcompare.engine import data, models, runtime
from peftcompare.engine.families import family_for_config
from peftcompare.engine.train import prepare_model


def preflight(spec: RunSpec) -> RunSpec:
    """The resolved spec, or ValueError with one line: model, family vs task, precision vs machine,
    method vs model (target modules included), data files and columns."""

    spec = spec.resolved()
    check_model(spec)
    data.load_task_data(spec)
    return spec


def preflight_all(specs: list[RunSpec]) -> list[RunSpec]:
    """preflight for a grid before any of it runs or is queued: every spec's model checks, and each distinct
    data source once (a sweep shares one), so a bad run in the middle never leaves half a grid behind."""

    out, seen = [], set()
    for spec in specs:
        spec = spec.resolved()
        check_model(spec)
        key = (spec.task, spec.dataset, spec.train_file, spec.validation_file, spec.text_column,
               spec.target_column, spec.prompt_template)
        if key not in seen:
            seen.add(key)
            data.load_task_data(spec)
        out.append(spec)
    return out


def check_model(spec: RunSpec) -> None:
    """The checks that depend on the model and the machine, not on the data (cached per combination)."""
    _check_model(spec.model_name, spec.task, spec.method, spec.capacity, spec.target_modules, spec.precision,
                 spec.lora_alpha, spec.lora_dropout)


@lru_cache(maxsize=64)
def _check_model(model_name, task, method, capacity, target_modules, precision, lora_alpha, lora_dropout):

    models.check_model_name(model_name)
    config = models.load_config(model_name)
    # the family comes from transformers' auto-model mappings: a model none of them covers stops here
    family = family_for_config(config, model_name)
    if tasks.get_task(task).generates and not family.generative:
        raise ValueError(f"task: {model_name} is an encoder classifier ({config.model_type}) and cannot do "
                         f"{task}; choose a seq2seq or causal model")
    runtime.resolve_precision(precision, runtime.device_name())
    spec = RunSpec(model_name=model_name, task=task, method=method, capacity=capacity,
                   target_modules=target_modules, precision=precision, lora_alpha=lora_alpha,
                   lora_dropout=lora_dropout).resolved()
    m = methods.get_method(method)
    if not m.trains:
        return
    loaded = models.load_model(model_name, meta=True)
    if m.uses_target_modules:
        _check_target_modules(spec, loaded)
    if m.reads_weights:  # its initialisation reads the weights a shapes-only copy lacks: the run applies it
        m.check_family(loaded.family.name, model_name)
        return
    prepare_model(spec, loaded, total_steps=100)


def _check_target_modules(spec: RunSpec, loaded) -> None:
    """Every name the user gave must match a module of this model (PEFT matches names by suffix)."""
    given = methods.target_names(spec)  # the spec guarantees at least one
    names = [n for n, _ in loaded.model.named_modules() if n]
    for user in given:  # one at a time: q, k and v may all be one fused module (GPT-2's c_attn)
        for peft_name in loaded.family.target_modules([user]):
            if not any(n == peft_name or n.endswith("." + peft_name) for n in names):
                raise ValueError(f"target_modules: {spec.model_name} has no module named {user!r} (its layers "
                                 f"are named {', '.join(sorted(_linear_leaves(loaded.model))[:12])})")


def _linear_leaves(model) -> set[str]:
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds = (*kinds, Conv1D)
    except ImportError:
        pass
    return {n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if n and isinstance(mod, kinds)}
