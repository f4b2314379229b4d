"""Confidence intervals and paired tests: checked against scipy and against cases with known answers."""
from __future__ import annotations

import math
import random

import pytest

from peftcompare.service import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 11, 13, 17, 22, 35, 50, 80, 200, 1000])
def test_t_quantiles_match_scipy(df):
    assert stats.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_ci_is_the_student_t_interval():
    xs = [0.71, 0.74, 0.69, 0.80]
    got = stats.mean_ci(xs)
    lo, hi = scipy_stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 4, scale=scipy_stats.sem(xs))
    assert (got.low, got.high, got.n) == (pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4), 4)
    assert stats.mean_ci([0.5]).low is None and stats.mean_ci([0.5]).n == 1  # no interval from one seed
    assert stats.mean_ci([0.5, float("nan"), 0.7]).n == 2  # a missing value is not a seed


def test_paired_bootstrap_sees_a_real_difference_and_not_a_fake_one():
    rng = random.Random(1)
    truth = [rng.random() < 0.5 for _ in range(400)]
    strong = [1.0 if rng.random() < 0.85 else 0.0 for _ in truth]  # correctness per example
    weak = [1.0 if rng.random() < 0.60 else 0.0 for _ in truth]
    real = stats.paired_bootstrap(strong, weak, resamples=1000)
    assert real.difference == pytest.approx(sum(strong) / 400 - sum(weak) / 400)
    assert real.low < real.difference < real.high and real.low > 0
    assert real.significant and real.p_value < 0.01
    # a system that gets 20 other examples right and 20 others wrong: the same accuracy, no difference to find
    noisy = list(strong)
    right = [i for i, v in enumerate(strong) if v == 1.0][:20]
    wrong = [i for i, v in enumerate(strong) if v == 0.0][:20]
    for i in right + wrong:
        noisy[i] = 1.0 - noisy[i]
    fake = stats.paired_bootstrap(strong, noisy, resamples=1000)
    assert fake.difference == 0 and not fake.significant and fake.low < 0 < fake.high
    # while 8 examples lost in one direction out of 400 ARE a difference a paired test sees
    worse = [0.0 if i in right[:8] else v for i, v in enumerate(strong)]
    assert stats.paired_bootstrap(strong, worse, resamples=1000).significant
    assert stats.paired_bootstrap(strong, strong, resamples=100).p_value == 1.0


def test_paired_bootstrap_with_f1_on_labels():
    refs = ["positive", "negative"] * 100
    good = list(refs)
    bad = ["positive"] * 200  # always says positive: F1 = 2/3
    metric = stats.f1_of(None, refs, "positive")
    out = stats.paired_bootstrap(good, bad, metric=metric, resamples=500)
    assert out.difference == pytest.approx(1 - 2 / 3)
    assert out.significant
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_bootstrap([1.0], [1.0, 0.0])


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    """The point of a 95 % interval: over many experiments of 3 seeds, ~95 % of intervals hold the true mean."""
    rng = random.Random(7)
    hits = sum(1 for _ in range(2000)
               if (ci := stats.mean_ci([rng.gauss(0.8, 0.02) for _ in range(3)])).low <= 0.8 <= ci.high)
    assert 0.93 < hits / 2000 < 0.97
    assert math.isnan(stats.mean_ci([]).mean)
