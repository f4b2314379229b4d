"""Additive low-rank updates of the attention projections: LoRA and AdaLoRA."""
from __future__ import annotations

from peftcompare.core.methods.base import (KNOB_RANK, PACK_LORA, SERVE_LORA_BANK, Method, register_method,
                                           target_names)

_LORA_FIELDS = ("lora_alpha", "lora_dropout", "target_modules")


def _lora(spec, model, tokenizer, family, total_steps=0):
    from peft import LoraConfig

    return LoraConfig(task_type=family.peft_task_type, r=spec.capacity, lora_alpha=spec.lora_alpha,
                      lora_dropout=spec.lora_dropout,
                      target_modules=family.target_modules(target_names(spec)),
                      modules_to_save=family.modules_to_save)


def _adalora(spec, model, tokenizer, family, total_steps=0):
    from peft import AdaLoraConfig

    # capacity is the target average rank: start 50% higher, prune towards it after a short warm-up, and
    # fix the allocation for the last fifth. total_steps must be the real step count: the final allocation
    # happens at step total_step - tfinal, which a padded count would never reach.
    total = max(total_steps, 2)
    tfinal = max(1, int(total * 0.2))
    tinit = min(int(total * 0.1), total - tfinal - 1)
    return AdaLoraConfig(task_type=family.peft_task_type, target_r=spec.capacity,
                         init_r=adalora_init_r(spec.capacity),
                         lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                         target_modules=family.target_modules(target_names(spec)),
                         tinit=tinit, tfinal=tfinal, deltaT=max(1, total // 20),
                         total_step=total, modules_to_save=family.modules_to_save)


def adalora_init_r(target_r: int) -> int:
    return max(target_r + 1, int(round(target_r * 1.5)))


def _adalora_step(model, step: int) -> None:
    # PEFT's Trainer integration never calls this; without it AdaLoRA is LoRA at init_r
    model.base_model.update_and_allocate(step)


register_method(Method(
    "lora", "LoRA", "rank r", (4, 8, 16, 32), 1024, make_config=_lora, serve=SERVE_LORA_BANK, pack=PACK_LORA,
    sweep_knob=KNOB_RANK, fields=_LORA_FIELDS, offline_grid=(4, 8),
    color="#4c78a8", method_family="additive low-rank",
    paper="LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)",
    help="Low-rank updates B·A added to the attention projections."))
register_method(Method(
    "adalora", "AdaLoRA", "target avg rank", (2, 4, 8, 16), 512, make_config=_adalora, sweep_knob=KNOB_RANK,
    on_step=_adalora_step, fields=_LORA_FIELDS, learning_rate=1e-3, reads_weights=True,
    color="#b279a2", method_family="additive low-rank",
    paper="Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (arXiv:2303.10512)",
    help="LoRA whose rank budget is reallocated across layers during training."))
