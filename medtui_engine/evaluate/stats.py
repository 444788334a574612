"""Paired statistics for base vs tuned on the same cases (pure Python, no dependencies).

* McNemar's exact test for a yes/no measure: the cases where exactly one model says yes are the
  discordant pairs (b: base yes, tuned no; c: base no, tuned yes); under no difference, c is
  Binomial(b + c, 1/2); the two-sided p value is min(1, 2 * P(X <= min(b, c))).
* A paired bootstrap interval for a difference of means (rates are means of 0/1): resample the
  cases (pairs kept together) with replacement, ``BOOTSTRAP_RESAMPLES`` times from a seeded
  generator, and take the 2.5th and 97.5th percentiles of the resampled differences.
"""

from __future__ import annotations

import math
import random

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p value from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (the common 'type 7' definition)."""
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


class PairedBootstrap:
    """One set of resampled case indices shared by every measure (so the intervals are comparable)."""

    def __init__(self, n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
        rng = random.Random(seed)
        self.n, self.resamples, self.seed = n, resamples, seed
        self.samples = [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)] if n else []

    def interval(self, diffs: list[float | None], level: float = 0.95) -> tuple[float, float] | None:
        """Interval for the mean of per-case differences (None entries: that case has no value in both)."""
        if len(diffs) != self.n or not self.n:
            return None
        means = []
        for idx in self.samples:
            xs = [diffs[i] for i in idx if diffs[i] is not None]
            if xs:
                means.append(sum(xs) / len(xs))
        if not means:
            return None
        means.sort()
        a = (1 - level) / 2
        return (_percentile(means, a), _percentile(means, 1 - a))


METHODS = {
    "pairing": "base and tuned answers are paired by case id; a measure's difference uses only cases where both "
               "models have a value",
    "mcnemar": "McNemar's exact test on each yes/no measure: b = cases yes for base only, c = yes for tuned only; "
               "two-sided p = min(1, 2·P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2)",
    "bootstrap": f"paired bootstrap 95% interval for each difference (tuned − base): {BOOTSTRAP_RESAMPLES} resamples "
                 f"of the cases with replacement (pairs kept together; Python's random.Random seeded with "
                 f"{BOOTSTRAP_SEED}), 2.5th and 97.5th percentiles of the resampled mean differences",
    "samples": "with k samples per case, a case's value is the mean over its samples (a yes/no measure: the share of "
               "samples that say yes); McNemar uses the per-case majority (yes when more than half the samples say yes)",
}
