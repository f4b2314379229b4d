"""Model families behind one interface: how a family is built, batched, scored and generated from.

Training, evaluation and the Compare engine only talk to a Family, so encoder-decoder, decoder-only
and encoder-classifier models share one training loop. One module per family; the built-in models live in
engine/builtin.py. Which family a model belongs to is transformers' own answer: the auto-model mappings it
loads a checkpoint by, so any text model it can build is covered, not a list kept here.
"""
from __future__ import annotations

from peftcompare.engine.families.base import IGNORE_INDEX, Family
from peftcompare.engine.families.causal import CausalFamily
from peftcompare.engine.families.encoder import EncoderFamily
from peftcompare.engine.families.seq2seq import Seq2SeqFamily

__all__ = ["IGNORE_INDEX", "Family", "FAMILIES", "family_for_config", "family_name", "CausalFamily",
           "EncoderFamily", "Seq2SeqFamily"]

SEQ2SEQ = Seq2SeqFamily()
FAMILIES: dict[str, Family] = {"seq2seq": SEQ2SEQ, "causal": CausalFamily(), "encoder": EncoderFamily()}


def family_name(model_type: str) -> str | None:
    """The family transformers' auto classes give a model type: a seq2seq LM first (BART also registers a
    causal decoder), then a causal LM, then a sequence classifier; None for none of them.

    An encoder that also registers a causal head (BERT's BertLMHeadModel, RoBERTa's, ...) stays an encoder:
    that head is the encoder run as a decoder (is_decoder=True), not a pretrained causal LM; such types
    are the ones with a masked-LM head too."""
    from transformers.models.auto import modeling_auto as auto

    if model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    if model_type in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "encoder"
    return None


def family_for_config(config, name: str = "") -> Family:
    """A fresh family for the model of `config` (a family instance carries its config and label words).
    `name` (the model as the user gave it) makes the refusal of an unsupported model name it."""
    model_type = getattr(config, "model_type", "") or ""
    kind = family_name(model_type)
    if kind is None:
        what = f"{name} has model type {model_type!r}, which" if name else f"model type {model_type!r}"
        raise ValueError(f"model_name: {what} is not supported: transformers has no seq2seq, causal LM or "
                         f"sequence-classification model for it (supported families: {', '.join(FAMILIES)})")
    return type(FAMILIES[kind])(config)
