"""Evaluation: label scoring for classification, batched greedy generation + ROUGE for summarization."""
from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext

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


# -- who answers a batch -----------------------------------------------------------------------------------
class Rows:
    """Who answers the rows of an evaluation batch. Here one model answers every row; a pack of runs
    (engine/packing.py) stacks its runs' batches into one and each run's adapter answers its own block of rows.

    The passes below take one feature set per run (`sets`) and walk them in step: batch i of every set goes
    through one forward (the sets' own length-sorted batches, so a set alone is batched exactly as before)."""

    def __init__(self, model):
        self.model = model

    def modules(self) -> list:
        """What eval() turns to evaluation mode for the pass (and back after it)."""
        return [self.model]

    def answering(self, parts: list[tuple[int, int]]):
        """A context giving the model for a batch made of blocks (set k, its rows n), in order."""
        return nullcontext(self.model)

    def losses(self, model, batch: dict, parts: list[tuple[int, int]]) -> list:
        """Each block's mean loss over its target tokens (one block here: the model's own loss, which a causal
        LM shifts by a token)."""
        return [model(**batch).loss]

    @contextmanager
    def evaluating(self):
        was = [m.training for m in self.modules()]
        for m in self.modules():
            m.eval()
        try:
            yield
        finally:
            for m, flag in zip(self.modules(), was):
                m.train(flag)


def _in_step(family, tokenizer, sets: list[list[dict]], batch_size: int, device: str, with_targets: bool = False):
    """(parts, live, batch) per step: live = (set k, its example indices) for each set that still has a batch,
    parts = (k, rows), batch = their features collated as one batch (padding masked, so each block computes
    what its own batch computes). Without targets only the inputs go in: a causal family pads a prompt to
    answer on the left, a training row on the right."""
    plans = [data_mod.sorted_batches([len(f["input_ids"]) for f in feats], batch_size) for feats in sets]
    for i in range(max((len(p) for p in plans), default=0)):
        live = [(k, p[i]) for k, p in enumerate(plans) if i < len(p)]
        feats = [sets[k][j] if with_targets else {"input_ids": sets[k][j]["input_ids"]} for k, idx in live
                 for j in idx]
        batch = {key: v.to(device) for key, v in family.collate(feats, tokenizer).items()}
        yield [(k, len(idx)) for k, idx in live], live, batch


def _spread(live, values: list, out: list[list]) -> None:
    """Row r of a stacked batch back to its set's example: out[k][i]."""
    r = 0
    for k, idx in live:
        for i in idx:
            out[k][i] = values[r]
            r += 1


# -- the passes ----------------------------------------------------------------------------------------------
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


def classify_distributions(model, family, tokenizer, features: list[dict], label_words: list[str],
                           batch_size: int, device: str = "cpu", dtype=None
                           ) -> tuple[list[str], list[float], list[list[float]]]:
    """`classify`, and every label's probability per example (what the disagreement finder ranks by)."""
    return classify_many(Rows(model), family, tokenizer, [features], label_words, batch_size, device, dtype)[0]


@torch.no_grad()
def classify_many(rows: Rows, family, tokenizer, sets: list[list[dict]], label_words: list[str], batch_size: int,
                  device: str = "cpu", dtype=None) -> list[tuple[list[str], list[float], list[list[float]]]]:
    """`classify_distributions` of every feature set, answered by `rows`."""
    ids = label_token_ids(tokenizer, label_words)
    dists: list[list] = [[None] * len(feats) for feats in sets]
    for parts, live, batch in _in_step(family, tokenizer, sets, batch_size, device):
        with rows.answering(parts) as model, autocast(device, dtype):
            scores = family.label_logprobs(model, batch, ids)
        _spread(live, torch.softmax(scores.float(), dim=-1).tolist(), dists)
    out = []
    for d in dists:
        best = [max(range(len(row)), key=row.__getitem__) for row in d]
        out.append(([label_words[b] for b in best], [float(row[b]) for row, b in zip(d, best)], d))
    return out


def summarize(model, family, tokenizer, features: list[dict], batch_size: int, max_new_tokens: int,
              device: str = "cpu", dtype=None) -> list[str]:
    return summarize_many(Rows(model), family, tokenizer, [features], batch_size, max_new_tokens, device, dtype)[0]


@torch.no_grad()
def summarize_many(rows: Rows, family, tokenizer, sets: list[list[dict]], batch_size: int, max_new_tokens: int,
                   device: str = "cpu", dtype=None) -> list[list[str]]:
    """Greedy generation (KV cache) for every feature set, answered by `rows`: rows keep their place in a greedy
    batch, so each block's adapter answers its own rows at every decoding step."""
    out: list[list] = [[""] * len(feats) for feats in sets]
    for parts, live, batch in _in_step(family, tokenizer, sets, batch_size, device):
        with rows.answering(parts) as model, autocast(device, dtype):
            texts = family.generate(model, batch, tokenizer, max_new_tokens)
        _spread(live, [t.strip() for t in texts], out)
    return out


def mean_loss(model, family, tokenizer, features: list[dict], batch_size: int, device: str = "cpu",
              dtype=None) -> dict:
    """{"eval_loss": the mean cross-entropy per target token over `features` (with labels), "eval_samples"}:
    one forward per batch, no generation (selection_metric=loss)."""
    return mean_loss_many(Rows(model), family, tokenizer, [features], batch_size, device, dtype)[0]


def mean_loss_many(rows: Rows, family, tokenizer, sets: list[list[dict]], batch_size: int, device: str = "cpu",
                   dtype=None) -> list[dict]:
    """`mean_loss` of every feature set, answered by `rows`."""
    totals = [[0.0, 0] for _ in sets]
    with rows.evaluating(), torch.no_grad():
        for parts, live, batch in _in_step(family, tokenizer, sets, batch_size, device, with_targets=True):
            with rows.answering(parts) as model, autocast(device, dtype):
                losses = rows.losses(model, batch, parts)
            start = 0
            for (k, idx), loss in zip(live, losses):
                n = int((batch["labels"][start:start + len(idx)] != -100).sum())
                totals[k][0] += float(loss) * n
                totals[k][1] += n
                start += len(idx)
    return [{"eval_loss": total / max(1, tokens), "eval_samples": len(feats)}
            for (total, tokens), feats in zip(totals, sets)]


def evaluate(model, family, tokenizer, spec, examples, features, label_words, device="cpu", dtype=None,
             generate_protocol: bool = True) -> dict:
    """Metrics dict for the spec's task; also returns a few predictions (`_predictions`) and every example's
    answer and score (`_per_example`) for the record.

    generate_protocol: classification is also scored the original experiment's way (greedy generation of up
    to 8 tokens, parsed: accuracy_generate / f1_generate) where the model can generate; the training loop
    turns it off for the per-epoch selection passes, which need only the primary metric."""
    return evaluate_many(Rows(model), family, tokenizer, spec, [(examples, features)], label_words, device, dtype,
                         generate_protocol)[0]


def evaluate_many(rows: Rows, family, tokenizer, spec, sets: list[tuple[list, list[dict]]], label_words,
                  device="cpu", dtype=None, generate_protocol: bool = True) -> list[dict]:
    """`evaluate` of every (examples, features) set, answered by `rows` (one pass over them all)."""
    feats = [f for _, f in sets]
    with rows.evaluating():
        if get_task(spec.task).scores_labels:
            answers = classify_many(rows, family, tokenizer, feats, label_words, spec.per_device_eval_batch_size,
                                    device, dtype)
            generated = (_generated_many(rows, family, tokenizer, spec, feats, label_words, device, dtype)
                         if generate_protocol and getattr(family, "generative", False) else [None] * len(sets))
            return [_classification(examples, a, g, label_words) for (examples, _), a, g in
                    zip(sets, answers, generated)]
        texts = summarize_many(rows, family, tokenizer, feats, spec.per_device_eval_batch_size,
                               spec.max_target_length, device, dtype)
        return [_summaries(examples, t, label_words) for (examples, _), t in zip(sets, texts)]


def _classification(examples, answers, generated, label_words) -> dict:
    preds, probs, dists = answers
    refs = [e.target for e in examples]
    metrics = classification_metrics(preds, refs, positive_label(label_words))
    metrics["mean_probability"] = sum(probs) / max(len(probs), 1)
    per = {"prediction": preds, "probability": [round(x, 5) for x in probs],
           "distribution": [[round(x, 5) for x in d] for d in dists],
           "correct": [int(p == r) for p, r in zip(preds, refs)]}
    if generated is not None:
        extra, extra_per = _parsed(generated, refs, label_words)
        metrics.update(extra)
        per.update(extra_per)
    return _with_answers(metrics, examples, preds, per, label_words)


def _summaries(examples, preds, label_words) -> dict:
    refs = [e.target for e in examples]
    each = rouge_each(preds, refs)
    metrics = {k: sum(e[k] for e in each) / max(len(each), 1) for k in ROUGE_KEYS}
    metrics["gen_len"] = sum(len(p.split()) for p in preds) / max(len(preds), 1)
    per = {"prediction": preds, **{k: [round(e[k], 5) for e in each] for k in ROUGE_KEYS}}
    return _with_answers(metrics, examples, preds, per, label_words)


def _with_answers(metrics: dict, examples, preds, per: dict, label_words) -> dict:
    metrics["eval_samples"] = len(examples)
    metrics["_predictions"] = [{"input": e.text[:300], "reference": e.target, "prediction": p}
                               for e, p in list(zip(examples, preds))[:8]]
    # every example's answer and score, aligned with the evaluation set and keyed by its content: paired
    # tests and the disagreement finder read these instead of running the models again
    metrics["_per_example"] = {"key": [data_mod.example_key(e) for e in examples],
                               "reference": [e.target for e in examples],
                               "input": [e.text[:300] for e in examples],  # enough to recognise it in a report
                               "label_words": list(label_words or []), **per}
    return metrics


def _generated_many(rows, family, tokenizer, spec, sets, label_words, device, dtype) -> list[list[str]]:
    return summarize_many(rows, family, tokenizer, sets, spec.per_device_eval_batch_size, GENERATE_TOKENS, device,
                          dtype)


def _parsed(texts: list[str], refs: list[str], label_words) -> tuple[dict, dict]:
    parsed = [parse_label(t, label_words) for t in texts]
    return (parsed_label_metrics(parsed, refs, label_words),
            {"generated": texts, "prediction_generate": parsed,
             "correct_generate": [int(p == r) for p, r in zip(parsed, refs)]})


def generated_protocol(model, family, tokenizer, spec, examples, features, label_words, device="cpu",
                       dtype=None) -> tuple[dict, dict]:
    """(metrics, per-example fields) of the original experiment's generate-and-parse scoring alone, for a
    classification model that can generate; ({}, {}) otherwise. For a run whose label-scoring metrics were
    taken during training (selection on validation), on its chosen state."""
    return generated_protocol_many(Rows(model), family, tokenizer, spec, [(examples, features)], label_words,
                                   device, dtype)[0]


def generated_protocol_many(rows: Rows, family, tokenizer, spec, sets: list[tuple[list, list[dict]]], label_words,
                            device="cpu", dtype=None) -> list[tuple[dict, dict]]:
    """`generated_protocol` of every (examples, features) set, answered by `rows`."""
    if not get_task(spec.task).scores_labels or not getattr(family, "generative", False):
        return [({}, {}) for _ in sets]
    with rows.evaluating():
        texts = _generated_many(rows, family, tokenizer, spec, [f for _, f in sets], label_words, device, dtype)
    return [_parsed(t, [e.target for e in examples], label_words) for (examples, _), t in zip(sets, texts)]
