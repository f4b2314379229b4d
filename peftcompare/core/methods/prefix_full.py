"""Prefix-Tuning as Li & Liang (2021) describe it for encoder-decoders: learned key/value prefixes in the
encoder's self-attention, the decoder's self-attention and the decoder's cross-attention (PEFT's `prefix`
reaches only the decoder's self-attention on T5 and BART).

The prefix is installed by torch code in the engine (`peftcompare.engine.prefix_full`). Core must not import
the engine, not even inside a function, so the method names that module as data (`engine_hooks`) and the
engine resolves it (`peftcompare.engine.method_hooks`): training calls its `prepare` after this `prepare` has
frozen the model, Compare and the adapter loader its `attach` before swapping the saved tensors in by name,
the adapter writer its `merge` first (a reparametrized prefix is stored as its MLP's output).
"""
from __future__ import annotations

from peftcompare.core.methods.base import KNOB_TOKENS, SERVE_SWAP, Method, register_method

ENGINE_HOOKS = "peftcompare.engine.prefix_full"
PREFIX_FULL_NOTE = ("Prefixes in the encoder's self-attention, the decoder's self-attention and the "
                    "cross-attention, as in Li & Liang (2021); T5 and BART models only.")


def _prepare(spec, model, family):
    """Everything frozen; the prefix itself is installed by the engine hooks (ENGINE_HOOKS)."""
    for p in model.parameters():
        p.requires_grad_(False)


def _notes(spec, loaded) -> list[str]:
    return ["prefixes in the encoder self-attention, decoder self-attention and cross-attention "
            "(Li & Liang 2021), not PEFT's decoder-only prefix"]


register_method(Method(
    "prefix_full", "Prefix-Tuning (faithful)", "virtual tokens", (10, 20, 50, 100), 1024,
    prepare=_prepare, engine_hooks=ENGINE_HOOKS, serve=SERVE_SWAP, sweep_knob=KNOB_TOKENS, notes=_notes,
    note=PREFIX_FULL_NOTE, learning_rate=1e-2, color="#e17c05", works_on=("seq2seq",),
    method_family="soft prompts",
    paper="Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190)",
    not_on_reason="it puts prefixes in an encoder's self-attention and a decoder's cross-attention",
    help="Trainable key/value prefixes in every encoder self-attention, decoder self-attention and "
         "cross-attention layer (the paper's encoder-decoder prefix tuning)."))
