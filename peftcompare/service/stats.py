"""Uncertainty for comparisons a reviewer accepts: confidence intervals over seeds, and paired tests on the
same evaluation examples.

Pure Python (the t quantiles come from a table of exact values, interpolated in 1/df where a df is not in it),
so the CLI and the app can compute them without torch.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

# two-sided 95 % Student t quantiles t_{0.975, df}; exact to 3 decimals (any statistics table)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: table values, linear in 1/df between them (error < 0.002), the normal limit beyond."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two seeds")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi = keys[-1], math.inf
        t_lo, t_hi = _T975[lo], _Z975
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        t_lo, t_hi = _T975[lo], _T975[hi]
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi is math.inf else 1 / hi))
    return t_lo + w * (t_hi - t_lo)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None  # None with fewer than two values: no interval can be given
    high: float | None
    n: int
    method: str = "t"  # how the interval was computed (shown beside it)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2


def mean_ci(values: list[float]) -> Interval:
    """Mean with a two-sided 95 % Student t-interval over seeds (n - 1 degrees of freedom)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, None, None, 0)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, None, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    h = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - h, mean + h, n)


@dataclass(frozen=True)
class PairedTest:
    difference: float  # metric(A) - metric(B) on the same examples
    low: float
    high: float
    p_value: float
    n_examples: int
    resamples: int
    method: str = "paired bootstrap"

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_bootstrap(a: list[float], b: list[float], metric=None, resamples: int = 2000,
                     seed: int = 0) -> PairedTest:
    """Paired bootstrap over examples: resample example indices with replacement, recompute the metric of both
    systems on the same resample, and read the 95 % interval and a two-sided p-value off the differences.

    `a`, `b`: per-example values (a correctness 0/1, a ROUGE-L, a predicted label), aligned on the same
    examples. `metric(values, indices)` turns one system's values on a resample into its score; the default
    is the mean (accuracy from 0/1 correctness, mean ROUGE-L). The p-value is the share of resampled
    differences on the far side of zero, doubled (the percentile test of Koehn 2004 / Efron & Tibshirani)."""
    if len(a) != len(b):
        raise ValueError("a paired test needs both systems' scores on the same examples")
    n = len(a)
    if n == 0:
        raise ValueError("no examples to compare")
    metric = metric or (lambda vals, idx: sum(vals[i] for i in idx) / len(idx))
    everything = range(n)
    observed = metric(a, everything) - metric(b, everything)
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(metric(a, idx) - metric(b, idx))
    diffs.sort()
    low, high = diffs[int(0.025 * resamples)], diffs[min(resamples - 1, int(0.975 * resamples))]
    if observed == 0 and all(d == 0 for d in diffs):
        p = 1.0
    else:
        beyond = sum(1 for d in diffs if (d <= 0 if observed > 0 else d >= 0))
        p = min(1.0, 2 * (beyond + 1) / (resamples + 1))
    return PairedTest(observed, low, high, p, n, resamples)


def f1_of(predictions: list[str], references: list[str], positive: str):
    """A metric for paired_bootstrap over predicted labels: F1 of the positive class on a resample."""
    def metric(vals, idx):
        tp = sum(1 for i in idx if vals[i] == positive and references[i] == positive)
        fp = sum(1 for i in idx if vals[i] == positive and references[i] != positive)
        fn = sum(1 for i in idx if vals[i] != positive and references[i] == positive)
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return metric
