"""Virtual tokens: prefix tuning (key/value prefixes), prompt tuning and P-tuning (input embeddings)."""
from __future__ import annotations

from peftcompare.core.methods.base import (KNOB_TOKENS, PACK_PREFIX, PACK_PROMPT, SERVE_PREFIX, SERVE_SOFT_PROMPT,
                                           Method, register_method)
from peftcompare.core.tasks import get_task

PREFIX_NOTE = "On encoder-decoder models PEFT's prefix reaches only the decoder's self-attention."


def _prefix(spec, model, tokenizer, family, total_steps=0):
    from peft import PrefixTuningConfig

    # d_model need not be a multiple of the head count (flan-t5-small: 512 vs 6 heads of 64), so give
    # the attention geometry explicitly; one submodule because the prefix only reaches one stack.
    heads, head_dim, layers = family.attention_geometry(model.config)
    return PrefixTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                              token_dim=heads * head_dim, num_attention_heads=heads, num_layers=layers,
                              modules_to_save=family.modules_to_save)


def _prefix_notes(spec, loaded) -> list[str]:
    return [PREFIX_NOTE] if loaded.family.name == "seq2seq" else []


def _prompt(spec, model, tokenizer, family, total_steps=0):
    from peft import PromptTuningConfig, PromptTuningInit

    # one set of virtual tokens (PEFT's seq2seq default of 2 leaves half of them untrained); shapes-only
    # models (parameter counts) have no embeddings to copy the instruction text from
    if next(model.parameters()).is_meta:
        return PromptTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                                  num_transformer_submodules=1, modules_to_save=family.modules_to_save)
    return PromptTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                              num_transformer_submodules=1, prompt_tuning_init=PromptTuningInit.TEXT,
                              prompt_tuning_init_text=get_task(spec.task).instruction,
                              tokenizer_name_or_path=tokenizer.name_or_path,
                              modules_to_save=family.modules_to_save)


def _ptuning(spec, model, tokenizer, family, total_steps=0):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=family.peft_task_type, num_virtual_tokens=spec.capacity,
                               num_transformer_submodules=1, encoder_hidden_size=128,
                               modules_to_save=family.modules_to_save)


_TOKENS = dict(capacity_name="virtual tokens", capacities=(10, 20, 50, 100), max_capacity=1024,
               sweep_knob=KNOB_TOKENS, learning_rate=3e-2)
register_method(Method(
    "prefix", "Prefix-Tuning", make_config=_prefix, serve=SERVE_PREFIX, notes=_prefix_notes, note=PREFIX_NOTE,
    pack=PACK_PREFIX,
    note_families=("t5", "seq2seq"), offline_grid=(8, 16), **{**_TOKENS, "learning_rate": 1e-2},
    color="#f58518", method_family="soft prompts",
    paper="Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190)",
    help="Trainable key/value prefixes prepended in every attention layer."))
register_method(Method(
    "prompt", "Prompt-Tuning", make_config=_prompt, serve=SERVE_SOFT_PROMPT, offline_grid=(8, 16), **_TOKENS,
    pack=PACK_PROMPT,
    color="#e45756", method_family="soft prompts",
    paper="The Power of Scale for Parameter-Efficient Prompt Tuning (arXiv:2104.08691)",
    help="Trainable soft-prompt embeddings prepended to the input, initialised from the task's instruction text."))
register_method(Method(
    "ptuning", "P-tuning", make_config=_ptuning, serve=SERVE_SOFT_PROMPT, **{**_TOKENS, "learning_rate": 1e-2},
    color="#72b7b2", method_family="soft prompts", paper="GPT Understands, Too (arXiv:2103.10385)",
    help="Virtual tokens produced by a small MLP prompt encoder."))
