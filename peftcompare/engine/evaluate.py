"""Evaluation: label scoring for classification, batched greedy generation + ROUGE for summarization."""
from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from peftcompare.core.tasks import get_task
from peftcompare.engine import data as data_mod

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def autocast(device: str, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def classification_metrics(predictions: list[str], references: list[str], positive: str) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(references, predictions)),
            "f1": float(f1_score(references, predictions, pos_label=positive, average="binary",
                                 labels=sorted(set(references) | set(predictions)), zero_division=0))
            if len(set(references) | set(predictions) | {positive}) <= 2 else
            float(f1_score(references, predictions, average="macro", zero_division=0))}


def _sentences(text: str) -> str:
    # rougeLsum splits on newlines only, and nltk's punkt is not available offline
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}
    for pred, ref in zip(predictions, references):
        s = scorer.score(_sentences(ref), _sentences(pred))
        for k in totals:
            totals[k] += s[k].fmeasure
    n = max(len(predictions), 1)
    return {k: v / n for k, v in totals.items()}


def label_token_ids(tokenizer, label_words: list[str]) -> list[list[int]]:
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in label_words]
    if any(not i for i in ids):
        raise ValueError("labels: a label word tokenizes to nothing")
    return ids


@torch.no_grad()
def classify(model, family, tokenizer, features: list[dict], label_words: list[str], batch_size: int,
             device: str = "cpu", dtype=None) -> tuple[list[str], list[float]]:
    """Best label and its probability (normalised over the labels) for each example, in input order."""
    ids = label_token_ids(tokenizer, label_words)
    preds: list[str] = [""] * len(features)
    probs: list[float] = [0.0] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    for idx in data_mod.sorted_batches(lengths, batch_size):
        batch = family.collate([{"input_ids": features[i]["input_ids"]} for i in idx], tokenizer)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, dtype):
            scores = family.label_logprobs(model, batch, ids)
        p = torch.softmax(scores.float(), dim=-1)
        best = p.argmax(-1)
        for row, i in enumerate(idx):
            preds[i] = label_words[int(best[row])]
            probs[i] = float(p[row, best[row]])
    return preds, probs


@torch.no_grad()
def summarize(model, family, tokenizer, features: list[dict], batch_size: int, max_new_tokens: int,
              device: str = "cpu", dtype=None) -> list[str]:
    out: list[str] = [""] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    for idx in data_mod.sorted_batches(lengths, batch_size):
        batch = family.collate([{"input_ids": features[i]["input_ids"]} for i in idx], tokenizer)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, dtype):
            texts = family.generate(model, batch, tokenizer, max_new_tokens)
        for i, t in zip(idx, texts):
            out[i] = t.strip()
    return out


def evaluate(model, family, tokenizer, spec, examples, features, label_words, device="cpu", dtype=None) -> dict:
    """Metrics dict for the spec's task; also returns a few predictions for the record."""
    was_training = model.training
    model.eval()
    try:
        refs = [e.target for e in examples]
        if get_task(spec.task).scores_labels:
            from peftcompare.core.tasks import positive_label

            preds, probs = classify(model, family, tokenizer, features, label_words,
                                    spec.per_device_eval_batch_size, device, dtype)
            metrics = classification_metrics(preds, refs, positive_label(label_words))
            metrics["mean_probability"] = sum(probs) / max(len(probs), 1)
        else:
            preds = summarize(model, family, tokenizer, features, spec.per_device_eval_batch_size,
                              spec.max_target_length, device, dtype)
            metrics = rouge(preds, refs)
            metrics["gen_len"] = sum(len(p.split()) for p in preds) / max(len(preds), 1)
        metrics["eval_samples"] = len(examples)
        metrics["_predictions"] = [{"input": e.text[:300], "reference": e.target, "prediction": p}
                                   for e, p in list(zip(examples, preds))[:8]]
        return metrics
    finally:
        model.train(was_training)
