"""The built-in models, in one place: their configs, their tokenizer, their seeded random weights.

`builtin:tiny-*` are small models of each family on a small BPE tokenizer shipped in the repo (pretrained once
per machine by engine/pretrain.py); `builtin:random-*` have the exact shapes of public checkpoints, for
parameter counts (built on the meta device) and for benchmarks.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from peftcompare.engine.families import FAMILIES, family_for_config

PREFIX = "builtin:"
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "builtin_tokenizer"  # package data
SEED = 1234  # the same weights in every process

# exact shapes of the public checkpoints (untied lm_head, like the real files)
FLAN_T5_SHAPES = {
    "random-flan-t5-small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8,
                                 num_decoder_layers=8, vocab_size=32128),
    "random-flan-t5-base": dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                                num_decoder_layers=12, vocab_size=32128),
    "random-flan-t5-large": dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24,
                                 num_decoder_layers=24, vocab_size=32128),
}
TINY_T5 = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)

_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
_SPECIAL = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)  # the built-in tokenizer's ids
BUILTINS: dict[str, tuple[str, dict]] = {  # name -> (family, config kwargs)
    # tiny models of each family, on the built-in tokenizer, for tests and offline use
    "tiny-gpt2": ("causal", dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                                 **_NO_DROPOUT, **_SPECIAL)),
    "tiny-bert": ("encoder", dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=1024, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, pad_token_id=0)),
    "tiny-bart": ("seq2seq", dict(model_type="bart", d_model=64, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                  decoder_ffn_dim=128, max_position_embeddings=1024, dropout=0.0,
                                  decoder_start_token_id=0, forced_eos_token_id=1,
                                  # BART's 0.02 makes every attention of a 64-wide model uniform: the decoder
                                  # then barely sees its input and pretraining stalls there; ~1/sqrt(d_model)
                                  init_std=0.1, **_SPECIAL)),
    # the exact shapes of public checkpoints, for parameter counts (meta device)
    "random-gpt2": ("causal", dict(model_type="gpt2", vocab_size=50257)),
    "random-bert-base": ("encoder", dict(model_type="bert", vocab_size=30522)),
    "random-t5-small": ("seq2seq", dict(model_type="t5", vocab_size=32128, d_model=512, d_ff=2048, d_kv=64,
                                        num_heads=8, num_layers=6, num_decoder_layers=6, feed_forward_proj="relu",
                                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                        tie_word_embeddings=True, keep_tied_embeddings=True)),
}


def names() -> list[str]:
    return [PREFIX + n for n in ["tiny-t5", *FLAN_T5_SHAPES, *BUILTINS]]


def config(name: str):
    """The config of built-in `name` (without the prefix); tiny ones take the built-in tokenizer's vocabulary."""
    from transformers import AutoConfig, T5Config

    common = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.1)
    if name == "tiny-t5":
        # no dropout: a few hundred thousand weights learn the generated text faster without it
        return T5Config(vocab_size=_vocab_size(), **TINY_T5, **{**common, "dropout_rate": 0.0})
    if name in FLAN_T5_SHAPES:
        return T5Config(**FLAN_T5_SHAPES[name], **common)
    if name in BUILTINS:
        kwargs = dict(BUILTINS[name][1])
        return AutoConfig.for_model(kwargs.pop("model_type"), **{"vocab_size": _vocab_size(), **kwargs})
    raise ValueError(f"model_name: unknown built-in model {PREFIX}{name}")


def tokenizer():
    """The built-in tokenizer (a small BPE shipped in the repo), T5-style: pad 0, eos 1, unk 2."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@lru_cache(maxsize=1)
def _vocab_size() -> int:
    return len(tokenizer())


def random_model(name: str, cfg=None):
    """Built-in `name` at its seeded random initialisation (before any pretraining), lm head untied."""
    import torch

    cfg = cfg if cfg is not None else config(name)
    family = family_for_config(cfg)
    # a fixed seed makes the weights identical in every process; the caller's RNG stays untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = family.from_config(cfg)
    family.untie_lm_head(model)
    model.eval()
    return model


assert all(fam in FAMILIES for fam, _ in BUILTINS.values())
