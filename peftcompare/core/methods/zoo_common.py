"""What the PEFT zoo's registrations share: one table row per method (`Zoo`), the make_config every row gets
(the PEFT config class, its capacity field, the family's target modules, the seq2seq task type, everything
else at PEFT's defaults), and the PEFT types that cannot train an encoder-decoder (`REFUSED`).

The methods themselves are registered by the zoo_* modules of their kind; this module registers nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from peftcompare.core.methods.base import FAMILIES, Method, register_method, target_names

# PEFT types that cannot train an encoder-decoder, with why: `methods` lists them as unavailable and a spec
# naming one is refused in one line (core/methods.get_method)
REFUSED: dict[str, str] = {
    "shadow": "ShadowPEFT runs a shadow network alongside a decoder-only model's layer loop (T5 fails in its "
              "forward pass)",
    "adaption_prompt": "PEFT's adaption prompt rewrites LLaMA-style decoder attention and refuses T5 "
                       "('Unsupported model type')",
    "cpt": "PEFT's context-aware prompt tuning (CPT) supports task_type CAUSAL_LM only",
    "xlora": "X-LoRA gates LoRA adapters trained beforehand: it trains no adapter of its own from a base model",
    "poly": "Poly mixes LoRA skills per task: every input needs a task id (task_ids), which a single-task run "
            "has none of",
    "multitask_prompt_tuning": "multitask prompt tuning needs a task id (task_ids) with every input, which a "
                               "single-task run has none of",
}

# the capacity of each zoo method that trains about 300k parameters on flan-t5-small (q and v adapted, the
# "PEFT zoo on FLAN-T5" preset), among those the 64-wide tiny model can hold too (the preset runs offline on it):
# FourierFT and WaveFT stop at 4096 coefficients (197k), PSOFT at r=64 (103k); methods that cannot reach
# 300k take their largest reference capacity
BUDGET: dict[str, int] = {}


@dataclass(frozen=True)
class Zoo:
    """One zoo method as a table row (see `register`)."""
    name: str  # PEFT's type in lower case (or the LoRA variant's name)
    title: str
    config: str  # the PEFT config class
    knob: str | None = None  # the config field spec.capacity sets; None: the method has no size knob
    capacity_name: str | None = None
    capacities: tuple[int, ...] = ()  # the reference grid: ~50k .. ~1.5M trainable on flan-t5-small
    max_capacity: int = 4096
    offline_grid: tuple[int, ...] = ()  # capacities for the tiny built-in models (64 wide)
    budget: int = 0  # see BUDGET
    family: str = ""  # base.METHOD_FAMILIES
    paper: str = ""
    help: str = ""
    color: str = ""
    works_on: tuple[str, ...] = FAMILIES
    not_on_reason: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)  # config fields that differ from PEFT's defaults
    # (spec, model, tokenizer, family, kwargs) -> kwargs: fields that depend on the model (shapes, meta device)
    adjust: Callable[..., dict] | None = None
    # (config, model) -> None: what can only be set on the config object (SHiRA's mask function)
    post: Callable[[Any, Any], None] | None = None
    targets: bool = True  # the config takes target_modules (spec.target_modules through the family mapping)
    method: dict[str, Any] = field(default_factory=dict)  # other Method fields (serve, learning_rate, ...)


def peft_config(row: Zoo) -> Callable[..., Any]:
    """The row's make_config: (spec, model, tokenizer, family, total_steps) -> the PEFT config."""

    def make(spec, model, tokenizer, family, total_steps=0):
        import peft

        kwargs = dict(row.fixed)
        if row.knob:
            kwargs[row.knob] = spec.capacity
        if row.targets:
            kwargs["target_modules"] = family.target_modules(target_names(spec))
        if family.modules_to_save:  # a new classification head trains with every method
            kwargs["modules_to_save"] = family.modules_to_save
        if row.adjust is not None:
            kwargs = row.adjust(spec, model, tokenizer, family, kwargs)
        config = getattr(peft, row.config)(task_type=family.peft_task_type, **kwargs)
        if row.post is not None:
            row.post(config, model)
        return config

    return make


def register(row: Zoo) -> Method:
    BUDGET[row.name] = row.budget
    fields = ("target_modules",) if row.targets else ()
    return register_method(Method(
        row.name, row.title, row.capacity_name, row.capacities, row.max_capacity, make_config=peft_config(row),
        offline_grid=row.offline_grid, method_family=row.family, paper=row.paper, help=row.help,
        color=row.color, works_on=row.works_on, not_on_reason=row.not_on_reason,
        **{"fields": fields, **row.method}))


# -- model-dependent settings ----------------------------------------------------------------------------
def is_meta(model) -> bool:
    """A shapes-only copy (parameter counts, preflight): nothing can be read from its weights."""
    return next(model.parameters()).is_meta


def adapted_shapes(model, targets: list[str]) -> dict[str, tuple[int, int]]:
    """{module name: (out features, in features)} of the layers `targets` select (PEFT's suffix match)."""
    out = {}
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if hasattr(module, "nx") and hasattr(module, "nf"):  # GPT-2's Conv1D stores (in, out)
            out[name] = (module.nf, module.nx)
        elif getattr(getattr(module, "weight", None), "ndim", 0) == 2:
            out[name] = tuple(module.weight.shape)
    return out


def vector_length(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """VB-LoRA cuts every adapted matrix into vectors of one length that must divide all their sides: PEFT's
    default 256 where it does, else the largest power-of-two divisor that does (128 on flan-t5-small)."""
    sides = [d for shape in adapted_shapes(model, kwargs["target_modules"]).values() for d in shape]
    return {**kwargs, "vector_length": math.gcd(256, *sides) if sides else 256}


def trainable_rank(spec, model, tokenizer, family, kwargs: dict) -> dict:
    """OSF's knob is the rank it preserves; ours is the rank that trains, the same for every adapted layer
    whatever its shape: each layer preserves min(shape) - capacity (PEFT's rank_pattern, one per layer)."""
    import re

    shapes = adapted_shapes(model, kwargs["target_modules"])
    short = min((min(s) for s in shapes.values()), default=spec.capacity)
    if spec.capacity > short:
        raise ValueError(f"capacity: OSF trains at most {short} ranks of these layers, got {spec.capacity}")
    pattern = {f"(^|\\.){re.escape(name)}$": min(shape) - spec.capacity for name, shape in shapes.items()}
    return {**kwargs, "effective_rank": None, "rank_pattern": pattern}
