"""Evaluation: label scoring for classification, batched greedy generation + ROUGE for summarization."""
from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from peftcompare.core.tasks import get_task, positive_label
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


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_each(predictions: list[str], references: list[str]) -> list[dict]:
    """Per-example ROUGE F-measures (stemmed), the numbers `rouge` averages."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out = []
    for pred, ref in zip(predictions, references):
        s = scorer.score(_sentences(ref), _sentences(pred))
        out.append({k: s[k].fmeasure for k in ROUGE_KEYS})
    return out


def rouge(predictions: list[str], references: list[str]) -> dict:
    each = rouge_each(predictions, references)
    n = max(len(each), 1)
    return {k: sum(e[k] for e in each) / n for k in ROUGE_KEYS}


def parse_label(text: str, label_words: list[str]) -> str | None:
    """The original experiment's reading of a generated answer: the label word that occurs first (as a
    substring, case-insensitive) wins; with none, the label whose first letter the answer starts with, where
    that letter names exactly one label; else None (counted as wrong)."""
    low = text.lower()
    found = [(low.find(w.lower()), w) for w in label_words if w.lower() in low]
    if found:
        return min(found)[1]
    start = low.strip()[:1]
    by_letter = [w for w in label_words if w[:1].lower() == start] if start else []
    return by_letter[0] if len(by_letter) == 1 else None


GENERATE_TOKENS = 8  # the original experiment generated up to 8 tokens for a label


def generated_labels(model, family, tokenizer, features: list[dict], label_words: list[str], batch_size: int,
                     device: str = "cpu", dtype=None) -> tuple[list[str], list[str | None]]:
    """(generated text, parsed label or None) per example: greedy generation of up to 8 tokens, read by
    `parse_label`, as the original experiment read its answers."""
    texts = summarize(model, family, tokenizer, features, batch_size, GENERATE_TOKENS, device, dtype)
    return texts, [parse_label(t, label_words) for t in texts]


def parsed_label_metrics(parsed: list[str | None], references: list[str], label_words: list[str]) -> dict:
    """accuracy_generate / f1_generate / unparsed_generate of parsed answers. An unparsed answer is wrong and
    never the positive class: F1 of the positive class counts it as a miss (macro F1 over the label words
    where there are more than two)."""
    n = max(len(parsed), 1)
    positive = positive_label(label_words)
    classes = [positive] if len(label_words) <= 2 else list(label_words)
    f1s = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(parsed, references))
        fp = sum(p == c and r != c for p, r in zip(parsed, references))
        fn = sum(p != c and r == c for p, r in zip(parsed, references))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy_generate": sum(p == r for p, r in zip(parsed, references)) / n,
            "f1_generate": sum(f1s) / len(f1s),
            "unparsed_generate": sum(p is None for p in parsed) / n}


def generated_label_metrics(model, family, tokenizer, features: list[dict], references: list[str],
                            label_words: list[str], batch_size: int, device: str = "cpu", dtype=None) -> dict:
    """Classification scored the way the original experiment (and several published notebooks) scored it:
    greedy generation of up to 8 tokens, parsed by `parse_label`. Recorded beside the label-scoring metrics
    as accuracy_generate / f1_generate, so numbers line up with published ones."""
    _, parsed = generated_labels(model, family, tokenizer, features, label_words, batch_size, device, dtype)
    return parsed_label_metrics(parsed, references, label_words)


def label_token_ids(tokenizer, label_words: list[str]) -> list[list[int]]:
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in label_words]
    if any(not i for i in ids):
        raise ValueError("labels: a label word tokenizes to nothing")
    return ids


@torch.no_grad()
def classify(model, family, tokenizer, features: list[dict], label_words: list[str], batch_size: int,
             device: str = "cpu", dtype=None) -> tuple[list[str], list[float]]:
    """Best label and its probability (normalised over the labels) for each example, in input order."""
    preds, probs, _ = classify_distributions(model, family, tokenizer, features, label_words, batch_size, device,
                                             dtype)
    return preds, probs


@torch.no_grad()
def classify_distributions(model, family, tokenizer, features: list[dict], label_words: list[str],
                           batch_size: int, device: str = "cpu", dtype=None
                           ) -> tuple[list[str], list[float], list[list[float]]]:
    """`classify`, and every label's probability per example (what the disagreement finder ranks by)."""
    ids = label_token_ids(tokenizer, label_words)
    preds: list[str] = [""] * len(features)
    probs: list[float] = [0.0] * len(features)
    dists: list[list[float]] = [[] for _ in features]
    lengths = [len(f["input_ids"]) for f in features]
    for idx in data_mod.sorted_batches(lengths, batch_size):
        batch = family.collate([{"input_ids": features[i]["input_ids"]} for i in idx], tokenizer)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, dtype):
            scores = family.label_logprobs(model, batch, ids)
        p = torch.softmax(scores.float(), dim=-1)
        best = p.argmax(-1)
        rows = p.tolist()
        for row, i in enumerate(idx):
            preds[i] = label_words[int(best[row])]
            probs[i] = float(p[row, best[row]])
            dists[i] = rows[row]
    return preds, probs, dists


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


def mean_loss(model, family, tokenizer, features: list[dict], batch_size: int, device: str = "cpu",
              dtype=None) -> dict:
    """{"eval_loss": the mean cross-entropy per target token over `features` (with labels), "eval_samples"}:
    one forward per batch, no generation (selection_metric=loss)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(features), batch_size):
                batch = {k: v.to(device) for k, v in family.collate(features[i:i + batch_size], tokenizer).items()}
                n = int((batch["labels"] != -100).sum())
                with autocast(device, dtype):
                    loss = model(**batch).loss
                total += float(loss) * n
                tokens += n
    finally:
        model.train(was_training)
    return {"eval_loss": total / max(1, tokens), "eval_samples": len(features)}


def evaluate(model, family, tokenizer, spec, examples, features, label_words, device="cpu", dtype=None,
             generate_protocol: bool = True) -> dict:
    """Metrics dict for the spec's task; also returns a few predictions (`_predictions`) and every example's
    answer and score (`_per_example`) for the record.

    generate_protocol: classification is also scored the original experiment's way (greedy generation of up
    to 8 tokens, parsed: accuracy_generate / f1_generate) where the model can generate; the training loop
    turns it off for the per-epoch selection passes, which need only the primary metric."""
    was_training = model.training
    model.eval()
    try:
        refs = [e.target for e in examples]
        if get_task(spec.task).scores_labels:
            preds, probs, dists = classify_distributions(model, family, tokenizer, features, label_words,
                                                         spec.per_device_eval_batch_size, device, dtype)
            metrics = classification_metrics(preds, refs, positive_label(label_words))
            metrics["mean_probability"] = sum(probs) / max(len(probs), 1)
            per = {"prediction": preds, "probability": [round(x, 5) for x in probs],
                   "distribution": [[round(x, 5) for x in d] for d in dists],
                   "correct": [int(p == r) for p, r in zip(preds, refs)]}
            if generate_protocol and getattr(family, "generative", False):
                extra, extra_per = _generated_protocol(model, family, tokenizer, spec, refs, features, label_words,
                                                       device, dtype)
                metrics.update(extra)
                per.update(extra_per)
        else:
            preds = summarize(model, family, tokenizer, features, spec.per_device_eval_batch_size,
                              spec.max_target_length, device, dtype)
            each = rouge_each(preds, refs)
            metrics = {k: sum(e[k] for e in each) / max(len(each), 1) for k in ROUGE_KEYS}
            metrics["gen_len"] = sum(len(p.split()) for p in preds) / max(len(preds), 1)
            per = {"prediction": preds, **{k: [round(e[k], 5) for e in each] for k in ROUGE_KEYS}}
        metrics["eval_samples"] = len(examples)
        metrics["_predictions"] = [{"input": e.text[:300], "reference": e.target, "prediction": p}
                                   for e, p in list(zip(examples, preds))[:8]]
        # every example's answer and score, aligned with the evaluation set and keyed by its content: paired
        # tests and the disagreement finder read these instead of running the models again
        metrics["_per_example"] = {"key": [data_mod.example_key(e) for e in examples], "reference": refs,
                                   "input": [e.text[:300] for e in examples],  # enough to recognise it in a report
                                   "label_words": list(label_words or []), **per}
        return metrics
    finally:
        model.train(was_training)


def _generated_protocol(model, family, tokenizer, spec, refs, features, label_words, device, dtype):
    texts, parsed = generated_labels(model, family, tokenizer, features, label_words,
                                     spec.per_device_eval_batch_size, device, dtype)
    return (parsed_label_metrics(parsed, refs, label_words),
            {"generated": texts, "prediction_generate": parsed,
             "correct_generate": [int(p == r) for p, r in zip(parsed, refs)]})


def generated_protocol(model, family, tokenizer, spec, examples, features, label_words, device="cpu",
                       dtype=None) -> tuple[dict, dict]:
    """(metrics, per-example fields) of the original experiment's generate-and-parse scoring alone, for a
    classification model that can generate; ({}, {}) otherwise. For a run whose label-scoring metrics were
    taken during training (selection on validation), on its chosen state."""
    if not get_task(spec.task).scores_labels or not getattr(family, "generative", False):
        return {}, {}
    was_training = model.training
    model.eval()
    try:
        return _generated_protocol(model, family, tokenizer, spec, [e.target for e in examples], features,
                                   label_words, device, dtype)
    finally:
        model.train(was_training)
