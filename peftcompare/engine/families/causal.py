"""Decoder-only models (GPT-2, Llama, Gemma, Qwen, ...): the answer follows the prompt and its cue, the loss
is on the answer only."""
from __future__ import annotations

import torch

from peftcompare.engine.families import layout
from peftcompare.engine.families.base import IGNORE_INDEX, Family, pad_rows


def _prompt_offset(logits: torch.Tensor, input_len: int) -> int:
    # prompt/p-tuning prepend virtual tokens whose logits come back too
    return logits.shape[1] - input_len


def _unpad(batch: dict) -> list[list[int]]:
    """Rows of a padded batch without their padding (either side)."""
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


class CausalFamily(Family):
    """Decoder-only LMs: prompt + answer cue, then the separator + target + eos; loss on the answer only.

    A prompt that runs straight into its answer ("...the film is great.positive") asks a pretrained LM
    for a word in the middle of nowhere; after a cue ("\nSentiment:") and a space it is the next word,
    written as its tokenizer writes a word after a space (GPT-2's " positive", Gemma's "▁positive").
    Training, label scoring and generation all read the prompt from encode/encode_inputs and score or
    write the answer after it the same way."""

    name = "causal"
    peft_task_type = "CAUSAL_LM"
    ANSWER_SEP = " "  # between the cue and the answer (the built-in tokenizer writes a leading space anyway)

    def __init__(self, config=None):
        super().__init__(config)
        self._tokenizer = None  # the model's tokenizer, to score labels as the answers are trained

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
        self._tokenizer = tokenizer

    def head_parameters(self, model):
        # the final norm sits above the top block; GPT-2's lm_head is tied to the input embeddings
        return [p for norm in layout.final_norms(model) for p in norm.parameters()]

    # -- data ---------------------------------------------------------------------------------------
    def _prompt_ids(self, sources, tokenizer, max_source, answer_cue=""):
        """Prompt tokens, cue included: the cue is never truncated away, the source is cut to fit it."""
        if not answer_cue:
            return [ids[:max_source] for ids in self._tokenize(sources, tokenizer, max_source + 1)]
        cue = tokenizer(answer_cue, add_special_tokens=False)["input_ids"]
        out = []
        # source and cue tokenized as one text (how the model reads it); a source too long for the
        # budget keeps its first tokens and the cue's own tokens follow
        for whole, cut in zip(self._tokenize([s + answer_cue for s in sources], tokenizer, None),
                              self._tokenize(sources, tokenizer, max(1, max_source - len(cue)) + 1)):
            out.append(whole if len(whole) <= max_source else cut[: max(1, max_source - len(cue))] + cue)
        return out

    @staticmethod
    def _tokenize(texts, tokenizer, max_length):
        out = []
        kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
        for ids in tokenizer(texts, **kwargs)["input_ids"]:
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]  # tokenizers that append eos (T5-style) would end the prompt early
            out.append(ids)
        return out

    def answer_ids(self, tokenizer, answers: list[str]) -> list[list[int]]:
        """Each answer's tokens as they follow a cue: the separator, then the text."""
        return tokenizer([self.ANSWER_SEP + a for a in answers], add_special_tokens=False)["input_ids"]

    def encode(self, sources, targets, tokenizer, max_source, max_target, answer_cue=""):
        prompts = self._prompt_ids(sources, tokenizer, max_source, answer_cue)
        feats = []
        for p, a in zip(prompts, self.answer_ids(tokenizer, targets)):
            a = a[: max(0, max_target - 1)] + [tokenizer.eos_token_id]
            feats.append({"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a})
        return feats

    def encode_inputs(self, sources, tokenizer, max_source, answer_cue=""):
        return [{"input_ids": ids} for ids in self._prompt_ids(sources, tokenizer, max_source, answer_cue)]

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        # training batches pad on the right (positions start at 0); prompts for generation pad on the left
        left = "labels" not in features[0]
        batch = {"input_ids": pad_rows(ids, tokenizer.pad_token_id, left),
                 "attention_mask": pad_rows([[1] * len(i) for i in ids], 0, left)}
        if not left:
            batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)
        return batch

    def _as_answers(self, label_ids):
        """The labels' own tokens (evaluate.label_token_ids) as training wrote them: after the separator."""
        tok = self._tokenizer
        if tok is None:  # a family never given its tokenizer scores the tokens as they come
            return [list(ids) for ids in label_ids]
        return self.answer_ids(tok, [tok.decode(ids).lstrip(self.ANSWER_SEP) for ids in label_ids])

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        """[batch, n_labels] log-likelihood of each label as the answer after each prompt."""
        label_ids = self._as_answers(label_ids)
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
