"""The intervals and tests the toolkit reports, each saying what it covers.

- :func:`reference_interval`: one test repeat's mean accuracy +- 1.96 x std / sqrt(n) over its
  episodes, with the population std (divided by n): the reference's formula, kept so that a
  repeat's line reads as its logs do (over 600 episodes the two stds differ by 0.08%).
- :func:`t_interval`: a mean with a Student-t 95% interval, sample std (n - 1): over the test
  episodes of one model (test sampling only), or over training seeds (what a claim about a
  method needs).
- :func:`paired`: two models on the same episodes, compared episode by episode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def reference_interval(values) -> tuple[float, float]:
    """Mean and the half-width 1.96 x std / sqrt(n) of the reference's reports (std over n)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


@dataclass(frozen=True)
class Interval:
    mean: float
    half: float  # the 95% interval is mean +- half; nan for fewer than two values
    sd: float    # sample standard deviation (n - 1)
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.half:.2f}"


def t_interval(values) -> Interval:
    """The mean of ``values`` with its Student-t 95% interval (n - 1 degrees of freedom)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return Interval(float(values.mean()) if n else math.nan, math.nan, math.nan, n)
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n))
    return Interval(float(values.mean()), half, sd, n)


@dataclass(frozen=True)
class Paired:
    """``a - b`` episode by episode (accuracies in %)."""
    difference: Interval  # mean difference with its paired t interval
    p_t: float            # two-sided paired t-test
    p_wilcoxon: float     # two-sided Wilcoxon signed-rank test, a check free of normality
    unpaired_half: float  # the half-width two independent means' difference would have

    @property
    def significant(self) -> bool:
        return self.p_t < 1 - CONFIDENCE

    def episodes_saved(self) -> float:
        """How many times more episodes an unpaired comparison would need for the same
        interval (the intervals shrink as 1 / sqrt(episodes))."""
        return (self.unpaired_half / self.difference.half) ** 2


def paired(a, b) -> Paired:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired needs two equal-length series of 2 or more, got {a.shape} "
                         f"and {b.shape}")
    difference = t_interval(a - b)
    if difference.sd == 0:  # identical on every episode: nothing to test
        p_t = p_wilcoxon = 1.0 if difference.mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel(a, b).pvalue)
        p_wilcoxon = float(stats.wilcoxon(a, b).pvalue)  # zero differences dropped
    critical = stats.t.ppf(0.5 + CONFIDENCE / 2, 2 * len(a) - 2)
    unpaired = float(critical * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / len(a)))
    return Paired(difference, p_t, p_wilcoxon, unpaired)


def proportion_interval(successes: int, trials: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion, as fractions: honest where a normal
    interval is not (a handful of queries, or all of them right)."""
    if trials == 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (
        1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
