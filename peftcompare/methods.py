"""PEFT method registry: adding a method is one entry in METHODS (and one line in the parametrized tests).

A method either returns a PEFT config (the adapter is saved with `save_pretrained` and loads with plain
`PeftModel.from_pretrained`) or freezes/unfreezes parts of the base model itself (`prepare`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    capacity_name: str | None  # None: the method has no capacity knob
    capacities: tuple[int, ...] = ()  # the reference grid
    max_capacity: int = 4096
    trains: bool = True
    make_config: Callable[..., Any] | None = None  # (spec, model, tokenizer, family) -> PeftConfig
    prepare: Callable[..., None] | None = None  # (spec, model, family) -> None, for non-PEFT methods
    note: str = ""
    families: tuple[str, ...] = ("seq2seq", "causal", "encoder")
    reference_line: bool = False  # drawn as a horizontal reference on curves (zero-shot, full)
    uses_target_modules: bool = False  # reads spec.target_modules (checked against the model in preflight)
    help: str = field(default="")


def target_names(spec) -> list[str]:
    return [t.strip() for t in spec.target_modules.split(",") if t.strip()]


def _lora(spec, model, tokenizer, family):
    from peft import LoraConfig

    return LoraConfig(task_type=family.peft_task_type, r=spec.capacity, lora_alpha=spec.lora_alpha,
                      lora_dropout=spec.lora_dropout,
                      target_modules=family.target_modules(target_names(spec)),
                      modules_to_save=family.modules_to_save)


def _prefix(spec, model, tokenizer, family):
    from peft import PrefixTuningConfig

    # d_model need not be a multiple of the head count (flan-t5-small: 512 vs 6 heads of 64), so give
    # the attention geometry explicitly; one submodule because the prefix only reaches one stack.
    heads, head_dim, layers = family.attention_geometry(model.config)
    return PrefixTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                              token_dim=heads * head_dim, num_attention_heads=heads, num_layers=layers,
                              modules_to_save=family.modules_to_save)


def _prompt(spec, model, tokenizer, family):
    from peft import PromptTuningConfig, PromptTuningInit

    from .tasks import get_task

    # one set of virtual tokens (PEFT's seq2seq default of 2 leaves half of them untrained); shapes-only
    # models (parameter counts) have no embeddings to copy the instruction text from
    if next(model.parameters()).is_meta:
        return PromptTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                                  num_transformer_submodules=1, modules_to_save=family.modules_to_save)
    return PromptTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                              num_transformer_submodules=1, prompt_tuning_init=PromptTuningInit.TEXT,
                              prompt_tuning_init_text=instruction_text(spec),
                              tokenizer_name_or_path=tokenizer.name_or_path,
                              modules_to_save=family.modules_to_save)


def _ptuning(spec, model, tokenizer, family):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                               num_transformer_submodules=1, encoder_hidden_size=128,
                               modules_to_save=family.modules_to_save)


def _ia3(spec, model, tokenizer, family):
    from peft import IA3Config

    targets, ff = family.ia3_modules(target_names(spec))
    return IA3Config(task_type=family.peft_task_type, target_modules=targets, feedforward_modules=ff,
                     modules_to_save=family.modules_to_save)


def _adalora(spec, model, tokenizer, family, total_step: int = 0):
    from peft import AdaLoraConfig

    # capacity is the target average rank: start 50% higher, prune towards it after a short warm-up, and
    # fix the allocation for the last fifth. total_step must be the real step count: the final allocation
    # happens at step total_step - tfinal, which a padded count would never reach.
    total = max(total_step, 2)
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


def _full(spec, model, family):
    for p in model.parameters():
        p.requires_grad_(True)


def _last_layers(spec, model, family):
    for p in model.parameters():
        p.requires_grad_(False)
    for module in family.top_blocks(model, spec.capacity):
        for p in module.parameters():
            p.requires_grad_(True)
    for p in family.head_parameters(model):
        p.requires_grad_(True)


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


INSTRUCTIONS = {
    "classification": "Classify if the sentiment of this movie review is positive or negative:",
    "summarization": "Summarize the following dialogue in one short sentence:",
}


def instruction_text(spec) -> str:
    return INSTRUCTIONS.get(spec.task, "Answer the following:")


METHODS: dict[str, Method] = {
    "zero_shot": Method("zero_shot", "Zero-shot", None, trains=False, reference_line=True,
                        help="The untouched base model on the same evaluation set: the baseline."),
    "lora": Method("lora", "LoRA", "rank r", (4, 8, 16, 32), 1024, make_config=_lora,
                   uses_target_modules=True,
                   help="Low-rank updates B·A added to the attention projections."),
    "prefix": Method("prefix", "Prefix-Tuning", "virtual tokens", (10, 20, 50, 100), 1024, make_config=_prefix,
                     note="On encoder-decoder models PEFT's prefix reaches only the decoder's self-attention.",
                     help="Trainable key/value prefixes prepended in every attention layer."),
    "prompt": Method("prompt", "Prompt-Tuning", "virtual tokens", (10, 20, 50, 100), 1024, make_config=_prompt,
                     help="Trainable soft-prompt embeddings prepended to the input, initialised from the "
                          "task's instruction text."),
    "ptuning": Method("ptuning", "P-tuning", "virtual tokens", (10, 20, 50, 100), 1024, make_config=_ptuning,
                      help="Virtual tokens produced by a small MLP prompt encoder."),
    "ia3": Method("ia3", "IA³", None, make_config=_ia3,
                  help="Learned scaling vectors on keys, values and the feed-forward activations."),
    "adalora": Method("adalora", "AdaLoRA", "target avg rank", (2, 4, 8, 16), 512, make_config=_adalora,
                      uses_target_modules=True,
                      help="LoRA whose rank budget is reallocated across layers during training."),
    "full": Method("full", "Full fine-tuning", None, prepare=_full, reference_line=True,
                   help="Every weight trains: the reference adapters are measured against."),
    "last_layers": Method("last_layers", "Last layers", "unfrozen blocks", (1, 2, 4), 64, prepare=_last_layers,
                          help="Only the top N transformer blocks (of each stack) and the head train."),
    "bitfit": Method("bitfit", "BitFit", None, prepare=_bitfit,
                     note="T5 has no bias terms: for T5 models BitFit tunes the LayerNorm weights instead.",
                     help="Only bias terms train (LayerNorm weights where a model has no biases)."),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r} (choose from {', '.join(METHODS)})") from None


def trainable_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.trains]
