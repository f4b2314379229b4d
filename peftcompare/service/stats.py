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


def paired_bootstrap_seeds(a: list, b: list, score, resamples: int = 2000, seed: int = 0,
                           block: int = 250) -> PairedTest:
    """The paired bootstrap of `paired_bootstrap` for systems of several seeds, vectorised (numpy).

    `a`, `b`: one array per seed of each system, shape (n examples, k components), every array aligned on the
    same n examples. A metric is a function of summed components: `score(sums, n)` maps sums of shape
    (..., k) over n examples to the metric (accuracy: k=1 correctness, sum / n; F1: k=3 true positives,
    false positives, false negatives, 2tp / (2tp + fp + fn)). A system's score on a resample of the
    examples is the mean over its seeds of the metric on that resample, so the test asks whether the
    methods differ on these examples, seeds averaged, not whether one seed beats another."""
    import numpy as np

    arrays_a = [np.asarray(x, dtype=float) for x in a]
    arrays_b = [np.asarray(x, dtype=float) for x in b]
    if not arrays_a or not arrays_b:
        raise ValueError("a paired test needs at least one run on each side")
    n = arrays_a[0].shape[0]
    if any(x.shape[0] != n for x in arrays_a + arrays_b):
        raise ValueError("a paired test needs both systems' scores on the same examples")
    if n == 0:
        raise ValueError("no examples to compare")

    def system(arrays, weights):  # weights (r, n) example counts -> (r,) seed-averaged scores
        return np.mean([score(weights @ x, n) for x in arrays], axis=0)

    ones = np.ones((1, n))
    observed = float(system(arrays_a, ones)[0] - system(arrays_b, ones)[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, block):  # (block, n) count matrices: memory stays small for big sets
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, resamples - start)).astype(float)
        diffs.append(system(arrays_a, w) - system(arrays_b, w))
    d = np.sort(np.concatenate(diffs))
    low, high = float(d[int(0.025 * resamples)]), float(d[min(resamples - 1, int(0.975 * resamples))])
    if observed == 0 and not d.any():
        p = 1.0
    else:
        beyond = int(np.sum(d <= 0) if observed > 0 else np.sum(d >= 0))
        p = min(1.0, 2 * (beyond + 1) / (resamples + 1))
    return PairedTest(observed, low, high, p, n, resamples)


def mean_score(sums, n):
    """`score` of a per-example mean (accuracy from 0/1 correctness, mean ROUGE-L): one component."""
    return sums[..., 0] / n


def f1_score(sums, n):
    """`score` of F1 from (true positives, false positives, false negatives); macro over classes when the
    components hold 3 per class."""
    import numpy as np

    k = sums.shape[-1] // 3
    parts = sums.reshape(*sums.shape[:-1], k, 3)
    tp, fp, fn = parts[..., 0], parts[..., 1], parts[..., 2]
    denom = 2 * tp + fp + fn
    f1 = np.where(tp > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return f1.mean(axis=-1)
