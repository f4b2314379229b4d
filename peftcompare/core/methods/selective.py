"""Methods that train a chosen part of the model: IA³ scaling vectors, the top blocks, the bias terms."""
from __future__ import annotations

from peftcompare.core.methods.base import Method, register_method, target_names


def _ia3(spec, model, tokenizer, family, total_steps=0):
    from peft import IA3Config

    targets, ff = family.ia3_modules(target_names(spec))
    return IA3Config(task_type=family.peft_task_type, target_modules=targets, feedforward_modules=ff,
                     modules_to_save=family.modules_to_save)


def _last_layers(spec, model, family):
    for p in model.parameters():
        p.requires_grad_(False)
    for module in family.top_blocks(model, spec.capacity):
        for p in module.parameters():
            p.requires_grad_(True)
    for p in family.head_parameters(model):
        p.requires_grad_(True)


def _has_bias(model) -> bool:
    return any(n.endswith(".bias") for n, _ in model.named_parameters())


def _bitfit(spec, model, family):
    """Bias terms only; a model without biases (T5) trains its LayerNorm weights instead."""
    for p in model.parameters():
        p.requires_grad_(False)
    named = list(model.named_parameters())
    chosen = [p for n, p in named if n.endswith(".bias")]
    if not chosen:
        chosen = [p for n, p in named if "layer_norm" in n.lower() or "layernorm" in n.lower()
                  or n.endswith("ln_f.weight") or ".ln_" in n]
    for p in chosen:
        p.requires_grad_(True)
    for name in family.modules_to_save or []:  # a new classification head always trains
        head = getattr(model, name, None)
        for p in (head.parameters() if head is not None else []):
            p.requires_grad_(True)


def _bitfit_notes(spec, loaded) -> list[str]:
    if _has_bias(loaded.model):
        return []
    return [f"{spec.model_name} has no bias terms: BitFit tuned its LayerNorm weights instead"]


register_method(Method(
    "ia3", "IA³", make_config=_ia3, fields=("target_modules",), learning_rate=3e-3,
    color="#54a24b", method_family="multiplicative/orthogonal",
    paper="Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (arXiv:2205.05638)",
    help="Learned scaling vectors on keys, values and the feed-forward activations."))
register_method(Method(
    "last_layers", "Last layers", "unfrozen blocks", (1, 2, 4), 64, prepare=_last_layers, learning_rate=1e-4,
    color="#bcbd22", method_family="selective",
    help="Only the top N transformer blocks (of each stack) and the head train."))
register_method(Method(
    "bitfit", "BitFit", prepare=_bitfit, notes=_bitfit_notes, learning_rate=1e-3,
    note="T5 has no bias terms: for T5 models BitFit tunes the LayerNorm weights instead.", note_families=("t5",),
    color="#ff9da6", method_family="selective",
    paper="BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models "
          "(arXiv:2106.10199)",
    help="Only bias terms train (LayerNorm weights where a model has no biases)."))
