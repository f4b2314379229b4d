"""The Family interface every model family implements, and the helpers they share.

What a method touches (target modules, IA³'s keys/values/feed-forward, the top blocks, the geometry of
the attention) comes from the model's module tree and config (families/layout.py), so any checkpoint
transformers can build is covered, not a list of model types.
"""
from __future__ import annotations

from typing import Any

import torch

from peftcompare.engine.families import layout as layout_mod

IGNORE_INDEX = -100  # label positions the loss never sees (padding, prompts of causal LMs)


def pad_rows(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def _first(config, *keys):
    """The first of `keys` the config sets (not None)."""
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return None


def _dedupe(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


class Family:
    name = ""
    peft_task_type = ""
    modules_to_save: list[str] | None = None
    generative = True  # can do summarization
    # the config attributes of the attention that prefixes extend (seq2seq: the decoder's)
    heads_keys: tuple[str, ...] = ("num_attention_heads",)
    layers_keys: tuple[str, ...] = ("num_hidden_layers",)

    def __init__(self, config=None):
        # one instance per model (family_for_config): it carries the model's config and what is read from it
        self.config = config
        self.model_type = getattr(config, "model_type", "")
        self._layout = None

    def auto_class(self):
        raise NotImplementedError

    def from_config(self, config):
        return self.auto_class().from_config(config)

    def untie_lm_head(self, model) -> None:
        pass

    def prepare_tokenizer(self, tokenizer, model) -> None:
        pass

    # -- what PEFT methods touch --------------------------------------------------------------------
    def layout(self) -> layout_mod.Layout:
        """The model's module names by role, read once from a shapes-only copy built from its config."""
        if self._layout is None:
            if self.config is None:
                raise ValueError("model_name: this family was made without a model config (use family_for_config)")
            with torch.device("meta"):
                model = self.from_config(self.config)
            hidden = self.config.get_text_config().hidden_size
            self._layout = layout_mod.read_layout(model, hidden)
        return self._layout

    def _role(self, role: str) -> list[str]:
        """PEFT names of one attention role (q, k, v, o); a fused projection stands for q, k and v."""
        lay = self.layout()
        members = lay.roles.get(role) or (lay.roles.get("qkv") if role in ("q", "k", "v") else None)
        if members:
            return lay.names(members)
        return self._peft_default(role)

    def _peft_default(self, role: str) -> list[str]:
        # PEFT's LoRA default for the architecture is its query and value projections (or one fused one)
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA

        default = LORA.get(self.model_type)
        if not isinstance(default, list) or len(default) > 2:
            return []
        if len(default) == 1:
            return list(default) if role in ("q", "k", "v") else []
        return [default[0]] if role == "q" else [default[1]] if role == "v" else []

    def target_modules(self, names: list[str]) -> list[str]:
        """PEFT target names for the user's: q, k, v and o are the attention's projections in this model
        (GPT-2's fused c_attn for any of q/k/v); any other name is a module name already, kept."""
        out: list[str] = []
        for n in names:
            out += (self._role(n) if n in layout_mod.ROLES else []) or [n]
        return _dedupe(out)

    def ia3_modules(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(target modules, feed-forward modules) of IA³: keys, values and the feed-forward output, as in
        the paper (T5: k, v, wo); where the tree has none of them, PEFT's defaults for the architecture."""
        lay = self.layout()
        attention = self._role("k") + self._role("v") if (lay.roles.get("k") or lay.roles.get("qkv")) else []
        ff = lay.names(lay.ffn_out) if lay.ffn_out else []
        if attention:
            return _dedupe(attention + ff), ff
        from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as IA3_FF,
                                          TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3)

        if self.model_type in IA3:
            return list(IA3[self.model_type]), list(IA3_FF.get(self.model_type, []))
        raise ValueError(f"method: cannot find the attention's key and value projections of this "
                         f"{self.model_type} model for IA3")

    def attention_geometry(self, config) -> tuple[int, int, int]:
        """(key/value heads, head dim, layers) of the attention a prefix extends. With grouped-query
        attention the cache has fewer heads than the queries (PEFT sizes prefixes by them); the head dim
        is the config's own where it sets one (T5's d_kv, Gemma 3's and Qwen 3's head_dim), which need not
        be hidden size / heads."""
        text = config.get_text_config()  # the text part of a composite config; not decoder=True, which
        # rewrites legacy seq2seq configs (BART) with default values
        heads = _first(text, *self.heads_keys)
        kv_heads = _first(text, "num_key_value_heads") or heads
        head_dim = _first(text, "head_dim", "d_kv") or text.hidden_size // heads
        return kv_heads, head_dim, _first(text, *self.layers_keys)

    def top_blocks(self, model, n: int) -> list[Any]:
        return layout_mod.layer_list(model)[-n:]

    def head_parameters(self, model) -> list[Any]:
        return []

    # -- data ---------------------------------------------------------------------------------------
    # `answer_cue` (the spec's, resolved): text a decoder-only model reads between the prompt and its
    # answer; the other families ignore it
    def encode(self, sources: list[str], targets: list[str], tokenizer, max_source: int,
               max_target: int, answer_cue: str = "") -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_inputs(self, sources: list[str], tokenizer, max_source: int, answer_cue: str = "") -> list[dict]:
        return [{"input_ids": ids} for ids in
                tokenizer(sources, truncation=True, max_length=max_source)["input_ids"]]

    # -- inference ----------------------------------------------------------------------------------
    def label_logprobs(self, model, batch: dict, label_ids: list[list[int]], **kwargs) -> torch.Tensor:
        """[batch, n_labels] log-likelihood of each label's tokens."""
        raise NotImplementedError

    def generate(self, model, batch: dict, tokenizer, max_new_tokens: int, **kwargs) -> list[str]:
        raise NotImplementedError
