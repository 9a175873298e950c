"""Figures over seeds: the mean with a Student-t 95% confidence interval, and whether two
methods' figures differ (Welch's t-test), so that a comparison says when it cannot tell."""

from __future__ import annotations

import math
from typing import Sequence

CONFIDENCE = 0.95
INTERVAL_NAME = "95% Student-t interval over seeds"


def summarize(values: Sequence[float]) -> dict:
    """`{"n", "mean", "half_width", "low", "high", "values"}`; the interval is
    mean ± t_{0.975, n-1} · s / sqrt(n) (s the sample standard deviation). With fewer than two
    values there is no interval (`half_width` None)."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "half_width": None, "low": None, "high": None,
                "values": []}
    mean = sum(values) / n
    half_width = None
    if n >= 2:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "half_width": half_width,
            "low": None if half_width is None else mean - half_width,
            "high": None if half_width is None else mean + half_width, "values": values}


def differ(a: Sequence[float], b: Sequence[float], alpha: float = 1 - CONFIDENCE) -> bool | None:
    """True when Welch's two-sided t-test rejects equal means at `alpha`; None when either side
    has fewer than two values (nothing can be said)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if len(set(a)) == 1 and len(set(b)) == 1:  # no spread at all: equal or not, exactly
        return a[0] != b[0]
    return bool(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue < alpha)
