"""The intervals the toolkit reports: what each covers, checked against values worked out by
hand and by simulation (a 95% interval must cover the true mean about 95% of the time)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from reports import statistics


def test_sample_std_divides_by_n_minus_1():
    """The issue's example: two repeats 45.64 and 44.45 have a sample std of 0.84, not the
    0.59 that dividing by n gives."""
    interval = statistics.t_interval([45.64, 44.45])
    assert interval.sd == pytest.approx(abs(45.64 - 44.45) / math.sqrt(2))
    assert round(interval.sd, 2) == 0.84
    # Two values: t with 1 degree of freedom is 12.706 (tables), so the half-width is
    # 12.706 x sd / sqrt(2).
    assert interval.half == pytest.approx(12.7062 * interval.sd / math.sqrt(2), rel=1e-4)


def test_t_interval_of_five_values_by_hand():
    interval = statistics.t_interval([1, 2, 3, 4, 5])
    assert interval.mean == 3 and interval.n == 5
    assert interval.sd == pytest.approx(math.sqrt(2.5))
    assert interval.half == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)


def test_one_value_has_no_interval():
    interval = statistics.t_interval([70.0])
    assert interval.mean == 70.0 and math.isnan(interval.half) and math.isnan(interval.sd)


def test_reference_interval_is_the_reference_formula():
    values = [60.0, 80.0, 100.0, 40.0]
    mean, half = statistics.reference_interval(values)
    assert mean == 70.0
    assert half == pytest.approx(1.96 * np.std(values) / 2)  # population std, sqrt(4) = 2


def test_t_interval_covers_the_true_mean_95_percent_of_the_time_with_three_seeds():
    """Three seeds: the Student-t interval covers the mean about 95% of the time; 1.96 x the
    sample std / sqrt(3) (a normal quantile) would cover it only about 80%."""
    rng = np.random.default_rng(0)
    samples = rng.normal(72.0, 3.0, size=(20_000, 3))
    covered = np.mean([abs(statistics.t_interval(s).mean - 72.0) <= statistics.t_interval(s).half
                       for s in samples[:4000]])
    assert 0.93 < covered < 0.97
    sd = samples.std(axis=1, ddof=1)
    normal = np.mean(np.abs(samples.mean(axis=1) - 72.0) <= 1.96 * sd / math.sqrt(3))
    assert normal < 0.85


def test_paired_comparison_finds_a_difference_that_unpaired_means_hide():
    """Two models on the same episodes: the episodes' difficulty varies far more than the
    models differ (1 point), which pairing cancels: the paired interval excludes 0, and the
    interval of two independent means would be several times wider."""
    rng = np.random.default_rng(1)
    difficulty = rng.normal(70, 12, 600)
    a = difficulty + rng.normal(0.5, 2, 600)
    b = difficulty + rng.normal(-0.5, 2, 600)
    result = statistics.paired(a, b)
    assert result.difference.mean == pytest.approx(np.mean(a - b))
    assert result.significant and result.p_t < 1e-6 and result.p_wilcoxon < 1e-6
    assert result.difference.mean - result.difference.half > 0
    assert result.unpaired_half > result.difference.mean  # unpaired: 0 inside its interval
    assert result.episodes_saved() > 10


def test_paired_comparison_of_equal_models_is_not_significant():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(70, 12, 600)
    a = difficulty + rng.normal(0, 2, 600)
    b = difficulty + rng.normal(0, 2, 600)
    result = statistics.paired(a, b)
    assert not result.significant and result.p_wilcoxon > 0.05
    assert result.difference.mean - result.difference.half < 0 < \
        result.difference.mean + result.difference.half
    same = statistics.paired(a, a)
    assert same.difference.mean == 0 and same.p_t == 1 and not same.significant


def test_paired_refuses_series_of_different_lengths():
    with pytest.raises(ValueError, match="equal-length"):
        statistics.paired([1.0, 2.0, 3.0], [1.0, 2.0])


def test_wilson_interval_by_hand_and_at_the_edges():
    """8 of 10: 0.490-0.943 (Wilson 1927, the textbook value); all right or all wrong still
    leave an interval, where the normal one would have width zero."""
    low, high = statistics.proportion_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert statistics.proportion_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert statistics.proportion_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
