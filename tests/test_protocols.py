"""The comparison protocols a reviewer asks about: the original experiment's generate-and-parse scoring."""
from __future__ import annotations

import pytest

from peftcompare.engine import evaluate

LABELS = ["negative", "positive"]


@pytest.mark.parametrize("text, want", [
    ("positive", "positive"), ("Negative.", "negative"), ("it is positive, not negative", "positive"),
    ("not positive but negative", "positive"),  # the first occurrence wins, as in the original rules
    ("neg", "negative"), ("p", "positive"), ("  Pos!", "positive"),  # first-letter heuristic
    ("great film", None), ("", None), ("the review is mixed", None),
])
def test_parse_label_follows_the_original_rules(text, want):
    assert evaluate.parse_label(text, LABELS) == want


def test_first_letter_shared_by_two_labels_is_not_a_guess():
    assert evaluate.parse_label("b", ["bad", "brilliant"]) is None


def test_both_protocols_in_the_same_evaluation(tmp_path):
    """Label scoring stays the primary metric; the generate-and-parse protocol is recorded beside it from the
    same evaluation, answer by answer, and not for an encoder classifier (which cannot generate)."""
    from peftcompare.service.store import Store
    from pipeline_helpers import run_in_process, tiny_spec

    store = Store(tmp_path)
    labels = ["negative", "positive"]
    for selection in ("dev", "validation"):
        run = run_in_process(store, tiny_spec(method="lora", capacity=4, learning_rate=2e-2, selection=selection))
        m, per = run["metrics"], store.examples(run["run_id"])
        assert {"accuracy", "f1", "accuracy_generate", "f1_generate", "unparsed_generate"} <= set(m)
        assert per["prediction_generate"] == [evaluate.parse_label(t, labels) for t in per["generated"]]
        assert m["accuracy_generate"] == pytest.approx(sum(per["correct_generate"]) / len(per["key"]))
        assert evaluate.parsed_label_metrics(per["prediction_generate"], per["reference"], labels) == pytest.approx(
            {k: m[k] for k in ("accuracy_generate", "f1_generate", "unparsed_generate")})
        assert not any("accuracy_generate" in e or "dev_accuracy_generate" in e for e in run["epochs"])
    bert = run_in_process(store, tiny_spec(model_name="builtin:tiny-bert", method="lora", capacity=4))
    assert "accuracy_generate" not in bert["metrics"] and "f1" in bert["metrics"]


def test_parsed_metrics_count_an_unparsed_answer_as_wrong():
    refs = ["positive", "negative", "positive", "negative"]
    got = evaluate.parsed_label_metrics(["positive", None, None, "negative"], refs, LABELS)
    assert got == {"accuracy_generate": 0.5, "f1_generate": pytest.approx(2 / 3), "unparsed_generate": 0.5}
