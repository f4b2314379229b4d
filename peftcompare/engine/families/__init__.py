"""Model families behind one interface: how a family is built, batched, scored and generated from.

Training, evaluation and the Compare engine only talk to a Family, so encoder-decoder, decoder-only
and encoder-classifier models share one training loop. One module per family; the built-in models live in engine/builtin.py.
"""
from __future__ import annotations

from peftcompare.engine.families.base import IGNORE_INDEX, Family
from peftcompare.engine.families.causal import CausalFamily
from peftcompare.engine.families.encoder import EncoderFamily
from peftcompare.engine.families.seq2seq import Seq2SeqFamily

__all__ = ["IGNORE_INDEX", "Family", "FAMILIES", "family_for_config", "CausalFamily", "EncoderFamily", "Seq2SeqFamily"]

SEQ2SEQ = Seq2SeqFamily()
FAMILIES: dict[str, Family] = {"seq2seq": SEQ2SEQ, "causal": CausalFamily(), "encoder": EncoderFamily()}


def family_for_config(config) -> Family:
    if getattr(config, "is_encoder_decoder", False):
        fam = Seq2SeqFamily()
        fam._bart = getattr(config, "model_type", "") != "t5"
        return fam
    model_type = getattr(config, "model_type", "")
    for fam in FAMILIES.values():
        if model_type in getattr(fam, "model_types", ()):
            fresh = type(fam)()  # per model: a family instance carries its model type and label words
            fresh.model_type = model_type
            return fresh
    raise ValueError(f"model_name: model type {model_type!r} is not supported "
                     f"(supported families: {', '.join(FAMILIES)})")
