"""Encoder-decoder models (T5, BART, mT5, ...): text-to-text training, label scoring and generation."""
from __future__ import annotations

import torch

from peftcompare.engine.families import layout
from peftcompare.engine.families.base import IGNORE_INDEX, Family, pad_rows


class Seq2SeqFamily(Family):
    name = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"
    # a prefix extends the decoder's self-attention
    heads_keys = ("decoder_attention_heads", "num_attention_heads")
    layers_keys = ("decoder_layers", "num_decoder_layers", "num_hidden_layers")

    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def untie_lm_head(self, model) -> None:
        # real flan-t5 checkpoints carry a separate lm_head; transformers 5 ties it for models built from a
        # config, which changes the parameter count and the decoder's output scaling
        if getattr(model.config, "model_type", "") != "t5" or model.lm_head.weight is not model.shared.weight:
            return
        if getattr(model.config, "keep_tied_embeddings", False):  # t5-small (v1) really is tied
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            weight = torch.empty_like(model.shared.weight).normal_(0.0, model.config.d_model ** -0.5)
        model.lm_head.weight = torch.nn.Parameter(weight)
        model.all_tied_weights_keys = {}
        model.config.scale_decoder_outputs = False

    def top_blocks(self, model, n):
        # the top n blocks of each stack
        return [b for stack in (model.get_encoder(), model.get_decoder()) for b in layout.layer_list(stack)[-n:]]

    def head_parameters(self, model):
        # the norms each stack applies after its blocks belong with the top blocks (T5's final_layer_norm;
        # BART has none: its final_layer_norm lives inside each block)
        return [p for stack in (model.get_encoder(), model.get_decoder()) for norm in layout.final_norms(stack)
                for p in norm.parameters()]

    def encode(self, sources, targets, tokenizer, max_source, max_target, answer_cue=""):
        # the answer cue is for decoder-only models; the decoder here starts its own sequence
        enc = tokenizer(sources, truncation=True, max_length=max_source)
        lab = tokenizer(text_target=targets, truncation=True, max_length=max_target)
        return [{"input_ids": i, "labels": l} for i, l in zip(enc["input_ids"], lab["input_ids"])]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": pad_rows(ids, tokenizer.pad_token_id)}
        batch["attention_mask"] = (pad_rows([[1] * len(i) for i in ids], 0))
        if "labels" in features[0]:
            batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)
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
