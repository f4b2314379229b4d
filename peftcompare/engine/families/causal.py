"""Decoder-only models (GPT-2, Llama, ...): the target follows the prompt, the loss is on the target only."""
from __future__ import annotations

import torch

from peftcompare.engine.families.base import IGNORE_INDEX, Family, pad_rows


def _prompt_offset(logits: torch.Tensor, input_len: int) -> int:
    # prompt/p-tuning prepend virtual tokens whose logits come back too
    return logits.shape[1] - input_len


def _unpad(batch: dict) -> list[list[int]]:
    """Rows of a padded batch without their padding (either side)."""
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


class CausalFamily(Family):
    """Decoder-only LMs (GPT-2 style): prompt + target + eos, loss on the target tokens only."""

    name = "causal"
    peft_task_type = "CAUSAL_LM"
    model_types = ("gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "opt", "phi")

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare_tokenizer(self, tokenizer, model) -> None:
        # GPT-2 ships without a pad token; padding is masked everywhere, so eos serves
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tokenizer.pad_token_id

    def _gpt2(self, config) -> bool:
        return getattr(config, "model_type", "") == "gpt2"

    def target_modules(self, names):
        if getattr(self, "model_type", "gpt2") == "gpt2":
            # GPT-2 fuses q, k and v into one Conv1D: any of them means c_attn
            mapped = ["c_attn" if n in ("q", "k", "v") else "attn.c_proj" if n == "o" else n for n in names]
            return list(dict.fromkeys(mapped))
        return [{"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}.get(n, n) for n in names]

    def ia3_modules(self, names):
        if getattr(self, "model_type", "gpt2") == "gpt2":
            return ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]
        return ["k_proj", "v_proj", "down_proj"], ["down_proj"]

    def attention_geometry(self, config):
        heads = config.num_attention_heads
        return heads, config.hidden_size // heads, config.num_hidden_layers

    def _layers(self, model):
        base = getattr(model, "transformer", None) or getattr(model, "model", None)
        layers = getattr(base, "h", None) or getattr(base, "layers", None)
        if layers is None:
            raise ValueError("method: cannot find the transformer blocks of this causal LM")
        return list(layers)

    def top_blocks(self, model, n):
        return self._layers(model)[-n:]

    def head_parameters(self, model):
        # the final norm sits above the top block; GPT-2's lm_head is tied to the input embeddings
        base = getattr(model, "transformer", None) or getattr(model, "model", None)
        norm = getattr(base, "ln_f", None) or getattr(base, "norm", None)
        return list(norm.parameters()) if norm is not None else []

    def _prompt_ids(self, sources, tokenizer, max_source):
        out = []
        for ids in tokenizer(sources, truncation=True, max_length=max_source + 1)["input_ids"]:
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]  # tokenizers that append eos (T5-style) would end the prompt early
            out.append(ids[:max_source])
        return out

    def encode(self, sources, targets, tokenizer, max_source, max_target):
        prompts = self._prompt_ids(sources, tokenizer, max_source)
        answers = tokenizer(targets, add_special_tokens=False)["input_ids"]
        feats = []
        for p, a in zip(prompts, answers):
            a = a[: max(0, max_target - 1)] + [tokenizer.eos_token_id]
            feats.append({"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a})
        return feats

    def encode_inputs(self, sources, tokenizer, max_source):
        return [{"input_ids": ids} for ids in self._prompt_ids(sources, tokenizer, max_source)]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        # training batches pad on the right (positions start at 0); prompts for generation pad on the left
        left = "labels" not in features[0]
        batch = {"input_ids": pad_rows(ids, tokenizer.pad_token_id, left),
                 "attention_mask": pad_rows([[1] * len(i) for i in ids], 0, left)}
        if not left:
            batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        prompts = _unpad(batch)
        device = batch["input_ids"].device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        scores = []
        # one forward per label, each row its own prompt + the label, right-padded so positions are exact
        for ids in label_ids:
            rows = [p + list(ids) for p in prompts]
            input_ids = pad_rows(rows, 0).to(device)
            mask = pad_rows([[1] * len(r) for r in rows], 0).to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, **kwargs).logits.float()
            # the label's j-th token is predicted by the logits one position before it
            pos = _prompt_offset(logits, input_ids.shape[1]) + lengths[:, None] - 1 + \
                torch.arange(len(ids), device=device)[None, :]
            logp = torch.log_softmax(logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])), -1)
            target = torch.tensor(ids, device=device)[None, :, None].expand(len(rows), -1, 1)
            scores.append(logp.gather(-1, target).squeeze(-1).sum(-1))
        return torch.stack(scores, dim=1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        config = getattr(model, "active_peft_config", None)
        padded = not bool(batch["attention_mask"].all())
        if padded and getattr(config, "is_prompt_learning", False) and not kwargs:
            # PEFT drops position ids for virtual tokens, so left padding would shift every position of a
            # padded row: generate those rows one at a time, unpadded
            texts = []
            for ids in _unpad(batch):
                row = torch.tensor([ids], device=batch["input_ids"].device)
                texts += self.generate(model, {"input_ids": row, "attention_mask": torch.ones_like(row)},
                                       tokenizer, max_new_tokens)
            return texts
        width = batch["input_ids"].shape[1]
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=1, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs)
        if out.shape[1] >= width and torch.equal(out[:, :width], batch["input_ids"]):
            out = out[:, width:]  # generation after the prompt: drop the echoed prompt
        return tokenizer.batch_decode(out, skip_special_tokens=True)
