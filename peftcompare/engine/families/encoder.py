"""Encoder classifiers (BERT, DeBERTa, ModernBERT, ...): a classification head over label words; no generation."""
from __future__ import annotations

import torch

from peftcompare.engine.families import layout
from peftcompare.engine.families.base import Family, pad_rows


class EncoderFamily(Family):
    """Encoder classifiers (BERT style): a classification head over the labels, trained with the method."""

    name = "encoder"
    peft_task_type = "SEQ_CLS"

    @property
    def modules_to_save(self):
        # the new head trains with every method and is saved with the adapter; a fresh list each time
        # because PEFT appends its own names to the list it is given
        return ["classifier"]
    generative = False

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def attach_labels(self, loaded, label_words: list[str]) -> None:
        """Size the head to the task's labels; head row i scores label_words[i]."""
        model = loaded.model
        self.label_words = list(label_words)
        n = len(label_words)
        if model.config.num_labels != n:
            head = model.classifier
            linear = head if isinstance(head, torch.nn.Linear) else head.out_proj
            new = torch.nn.Linear(linear.in_features, n, device=linear.weight.device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(4321)
                new.weight.data.normal_(0.0, model.config.initializer_range)
                new.bias.data.zero_()
            if isinstance(head, torch.nn.Linear):
                model.classifier = new
            else:
                head.out_proj = new
            model.config.num_labels = n
            model.num_labels = n
        model.config.id2label = dict(enumerate(label_words))
        model.config.label2id = {w: i for i, w in enumerate(label_words)}

    def _base(self, model):
        return getattr(model, model.base_model_prefix)

    def top_blocks(self, model, n):
        base = self._base(model)
        # what sits between the top block and the classifier trains with it: BERT's pooler, DeBERTa's
        # pooler, DistilBERT's pre_classifier, ModernBERT's final norm and head
        above = [base.pooler] if getattr(base, "pooler", None) is not None else []
        above += layout.final_norms(base)
        above += [m for name, m in model.named_children()
                  if m is not base and name not in self.modules_to_save and any(True for _ in m.parameters())]
        return layout.layer_list(base)[-n:] + above

    def head_parameters(self, model):
        return list(model.classifier.parameters())

    def collate(self, features, tokenizer):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": pad_rows(ids, tokenizer.pad_token_id),
                 "attention_mask": pad_rows([[1] * len(i) for i in ids], 0)}
        if "target" in features[0]:
            words = getattr(self, "label_words", None)
            if not words:
                raise ValueError("labels: the encoder family needs attach_labels() before training")
            index = {w: i for i, w in enumerate(words)}
            batch["labels"] = torch.tensor([index[f["target"]] for f in features], dtype=torch.long)
        return batch

    def encode(self, sources, targets, tokenizer, max_source, max_target, answer_cue=""):
        # the class index is known only once the label words are attached, so keep the word here
        return [{**f, "target": t} for f, t in zip(self.encode_inputs(sources, tokenizer, max_source), targets)]

    def label_logprobs(self, model, batch, label_ids, **kwargs):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
        if logits.shape[-1] != len(label_ids):
            raise ValueError(f"labels: the classification head has {logits.shape[-1]} outputs for "
                             f"{len(label_ids)} labels")
        return torch.log_softmax(logits.float(), dim=-1)

    def generate(self, model, batch, tokenizer, max_new_tokens, **kwargs):
        raise ValueError("task: encoder classifiers cannot generate text (summarization needs a seq2seq or "
                         "causal model)")
