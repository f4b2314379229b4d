"""Model families behind one interface: how a family is built, batched, scored and generated from.

Training, evaluation and the Compare engine only talk to a Family, so encoder-decoder, decoder-only
and encoder-classifier models share one training loop.
"""
from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # label positions the loss never sees (padding, prompts of causal LMs)

# built-in models of other families register here: name -> (family name, config kwargs)
EXTRA_BUILTINS: dict[str, tuple[str, dict]] = {}


def _pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


class Family:
    name = ""
    peft_task_type = ""
    modules_to_save: list[str] | None = None
    generative = True  # can do summarization

    def auto_class(self):
        raise NotImplementedError

    def from_config(self, config):
        return self.auto_class().from_config(config)

    def untie_lm_head(self, model) -> None:
        pass

    def prepare_tokenizer(self, tokenizer, model) -> None:
        pass

    # -- what PEFT methods touch --------------------------------------------------------------------
    def target_modules(self, names: list[str]) -> list[str]:
        return names

    def ia3_modules(self, names: list[str]) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def attention_geometry(self, config) -> tuple[int, int, int]:
        raise NotImplementedError

    def top_blocks(self, model, n: int) -> list[Any]:
        raise NotImplementedError

    def head_parameters(self, model) -> list[Any]:
        return []

    # -- data ---------------------------------------------------------------------------------------
    def encode(self, sources: list[str], targets: list[str], tokenizer, max_source: int,
               max_target: int) -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_inputs(self, sources: list[str], tokenizer, max_source: int) -> list[dict]:
        return [{"input_ids": ids} for ids in
                tokenizer(sources, truncation=True, max_length=max_source)["input_ids"]]

    # -- inference ----------------------------------------------------------------------------------
    def label_logprobs(self, model, batch: dict, label_ids: list[list[int]], **kwargs) -> torch.Tensor:
        """[batch, n_labels] log-likelihood of each label's tokens."""
        raise NotImplementedError

    def generate(self, model, batch: dict, tokenizer, max_new_tokens: int, **kwargs) -> list[str]:
        raise NotImplementedError


class Seq2SeqFamily(Family):
    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def untie_lm_head(self, model) -> None:
        # real flan-t5 checkpoints carry a separate lm_head; transformers 5 ties it for models built from a
        # config, which changes the parameter count and the decoder's output scaling
        if getattr(model.config, "model_type", "") != "t5" or model.lm_head.weight is not model.shared.weight:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            weight = torch.empty_like(model.shared.weight).normal_(0.0, model.config.d_model ** -0.5)
        model.lm_head.weight = torch.nn.Parameter(weight)
        model.all_tied_weights_keys = {}
        model.config.scale_decoder_outputs = False

    def attention_geometry(self, config):
        if getattr(config, "model_type", "") == "t5":
            return config.num_heads, config.d_kv, config.num_decoder_layers
        heads = config.decoder_attention_heads
        return heads, config.d_model // heads, config.decoder_layers

    def target_modules(self, names):
        if getattr(self, "_bart", False):
            return [{"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}.get(n, n) for n in names]
        return names

    def ia3_modules(self, names):
        return ["k", "v", "wo"], ["wo"]

    def top_blocks(self, model, n):
        blocks = []
        for stack in (model.get_encoder(), model.get_decoder()):
            layers = getattr(stack, "block", None) or getattr(stack, "layers")
            blocks.extend(list(layers)[-n:])
        return blocks

    def head_parameters(self, model):
        # final layer norms belong with the top blocks
        return [p for n, p in model.named_parameters() if "final_layer_norm" in n and "block" not in n]

    def encode(self, sources, targets, tokenizer, max_source, max_target):
        enc = tokenizer(sources, truncation=True, max_length=max_source)
        lab = tokenizer(text_target=targets, truncation=True, max_length=max_target)
        return [{"input_ids": i, "labels": l} for i, l in zip(enc["input_ids"], lab["input_ids"])]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": _pad(ids, tokenizer.pad_token_id)}
        batch["attention_mask"] = (_pad([[1] * len(i) for i in ids], 0))
        if "labels" in features[0]:
            batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def _start(self, model) -> int:
        cfg = model.config  # a PeftModel forwards .config to its base model
        return cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        bsz = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        start = self._start(model)
        if all(len(l) == 1 for l in label_ids):
            # one decoder step scores every single-token label at once
            dec = torch.full((bsz, 1), start, dtype=torch.long, device=device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=dec, **kwargs).logits[:, 0, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            return logp[:, [l[0] for l in label_ids]]
        scores = []
        for ids in label_ids:
            target = torch.tensor(ids, device=device).unsqueeze(0).expand(bsz, -1)
            dec = torch.cat([torch.full((bsz, 1), start, dtype=torch.long, device=device), target[:, :-1]], 1)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=dec, **kwargs).logits.float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            scores.append(logp.sum(-1))
        return torch.stack(scores, dim=1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, use_cache=True,
                             **kwargs)
        return tokenizer.batch_decode(out, skip_special_tokens=True)


SEQ2SEQ = Seq2SeqFamily()
FAMILIES: dict[str, Family] = {"seq2seq": SEQ2SEQ}


def family_for_config(config) -> Family:
    if getattr(config, "is_encoder_decoder", False):
        fam = Seq2SeqFamily()
        fam._bart = getattr(config, "model_type", "") != "t5"
        return fam
    model_type = getattr(config, "model_type", "")
    for fam in FAMILIES.values():
        if model_type in getattr(fam, "model_types", ()):
            return fam
    raise ValueError(f"model_name: model type {model_type!r} is not supported "
                     f"(supported families: {', '.join(FAMILIES)})")


def builtin_config(name: str, vocab_size: int):
    from transformers import T5Config

    from .models import FLAN_T5_SHAPES, TINY_T5

    common = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.1)
    if name == "tiny-t5":
        return T5Config(vocab_size=vocab_size, **TINY_T5, **common)
    if name in FLAN_T5_SHAPES:
        return T5Config(**FLAN_T5_SHAPES[name], **common)
    if name in EXTRA_BUILTINS:
        family_name, kwargs = EXTRA_BUILTINS[name]
        return FAMILIES[family_name].builtin_config(kwargs, vocab_size)
    raise ValueError(f"model_name: unknown built-in model builtin:{name}")
