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
