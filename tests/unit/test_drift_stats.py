"""Drift statistics and buckets against numpy: moments, merge, buckets, PSI and the z-score."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from prometheus_client.utils import floatToGoString

from modelserve.buckets import (
    DEFAULT_EDGES,
    DEFAULT_REFERENCE_MEAN,
    DEFAULT_REFERENCE_STD,
    BucketCounts,
    decumulate,
    edges_for_reference,
    le_label,
    validate_edges,
)
from modelserve.drift.stats import RunningStats, psi, standardized_shift, z_score

MEAN, SD = DEFAULT_REFERENCE_MEAN, DEFAULT_REFERENCE_STD


def stats_of(values) -> RunningStats:
    stats = RunningStats()
    stats.update(float(v) for v in values)
    return stats


def live_stats(rng: np.random.Generator, n: int, shift_sd: float = 0.0) -> tuple[float, int]:
    """Mean and size of a live window drawn from the reference, x1 moved by shift_sd sd."""
    return float(rng.normal(MEAN + shift_sd * SD, SD, n).mean()), n


# --------------------------------------------------------------------------- RunningStats


def test_empty_stream_has_no_mean_and_no_variance() -> None:
    stats = RunningStats()
    assert stats.count == 0
    assert math.isnan(stats.mean)
    assert math.isnan(stats.variance)
    assert math.isnan(stats.population_variance)
    assert math.isnan(stats.stddev)


def test_one_value_has_its_mean_no_sample_variance_and_zero_population_variance() -> None:
    stats = stats_of([0.7])
    assert stats.mean == 0.7
    assert math.isnan(stats.variance)
    assert math.isnan(stats.stddev)
    assert stats.population_variance == 0.0
    assert stats.population_stddev == 0.0


def test_two_values_match_numpy() -> None:
    stats = stats_of([0.2, 0.9])
    assert stats.mean == pytest.approx(np.mean([0.2, 0.9]))
    assert stats.variance == pytest.approx(np.var([0.2, 0.9], ddof=1))
    assert stats.population_variance == pytest.approx(np.var([0.2, 0.9]))


@pytest.mark.parametrize("n", [3, 10, 1000, 200_000])
def test_random_streams_match_numpy(n: int) -> None:
    values = np.random.default_rng(n).normal(MEAN, SD, n)
    stats = stats_of(values)
    assert stats.count == n
    assert stats.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
    assert stats.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
    assert stats.population_variance == pytest.approx(values.var(), rel=1e-9)
    assert stats.stddev == pytest.approx(values.std(ddof=1), rel=1e-9)


def test_large_offset_does_not_lose_the_variance() -> None:
    # sumsq/n - mean^2 would cancel to garbage here; Welford keeps it.
    values = 1e9 + np.random.default_rng(1).normal(0.0, 1.0, 10_000)
    assert stats_of(values).variance == pytest.approx(values.var(ddof=1), rel=1e-6)


@pytest.mark.parametrize(("n_a", "n_b"), [(0, 0), (0, 5), (5, 0), (1, 1), (1, 2), (700, 300)])
def test_merge_equals_one_pass(n_a: int, n_b: int) -> None:
    rng = np.random.default_rng(n_a * 1000 + n_b)
    a, b = rng.normal(0.3, 0.1, n_a), rng.normal(0.8, 0.4, n_b)
    merged = stats_of(a).merge(stats_of(b))
    whole = stats_of(np.concatenate([a, b]))
    assert merged.count == whole.count
    for name in ("mean", "variance", "population_variance"):
        got, want = getattr(merged, name), getattr(whole, name)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-9)


def test_state_round_trips_and_rejects_impossible_values() -> None:
    stats = stats_of([0.1, 0.4, 0.35])
    assert RunningStats.from_dict(stats.to_dict()) == stats
    with pytest.raises(ValueError):
        RunningStats.from_dict({"count": 2, "mean": 0.1, "m2": -1.0})


# --------------------------------------------------------------------------- buckets


def test_default_edges_are_the_standard_edges_of_the_reference_distribution() -> None:
    assert edges_for_reference(MEAN, SD) == DEFAULT_EDGES
    assert [le_label(e) for e in DEFAULT_EDGES] == [f"0.{i}" for i in range(1, 10)]


def test_bucket_counts_match_numpy_histogram_with_open_ends() -> None:
    values = np.random.default_rng(7).normal(MEAN, SD, 5000)
    buckets = BucketCounts(DEFAULT_EDGES)
    for v in values:
        buckets.add(float(v))
    bins = [-np.inf, *DEFAULT_EDGES, np.inf]
    assert buckets.counts == np.histogram(values, bins=bins)[0].tolist()
    assert buckets.total == 5000


def test_edge_values_fall_in_the_bucket_they_bound_like_prometheus_le() -> None:
    buckets = BucketCounts((0.1, 0.2))
    for x in (0.1, 0.2, 0.05, 0.15, 0.25, -1e300, 1e300):
        buckets.add(x)
    # (-inf, 0.1]: 0.1, 0.05, -1e300 | (0.1, 0.2]: 0.2, 0.15 | (0.2, inf): 0.25, 1e300
    assert buckets.counts == [3, 2, 2]
    assert buckets.cumulative() == [("0.1", 3), ("0.2", 5), ("+Inf", 7)]
    assert decumulate([3, 5, 7]) == [3, 2, 2]


def test_bucket_merge_and_edge_validation() -> None:
    a, b = BucketCounts((0.0, 1.0), [1, 2, 3]), BucketCounts((0.0, 1.0), [4, 5, 6])
    assert a.merge(b).counts == [5, 7, 9]
    with pytest.raises(ValueError):
        a.merge(BucketCounts((0.0, 2.0)))
    for bad in ([], [0.2, 0.1], [0.1, 0.1], [0.0, math.inf], [math.nan]):
        with pytest.raises(ValueError):
            validate_edges(bad)


@pytest.mark.parametrize("edge", [0.1, 0.25, 1.0, 2.5, 10.0, 1e6, 123456789.0, -3.5, math.inf])
def test_le_label_is_written_like_prometheus_client_writes_it(edge: float) -> None:
    assert le_label(edge) == floatToGoString(edge)


# --------------------------------------------------------------------------- PSI


def histogram(values: np.ndarray) -> list[int]:
    return np.histogram(values, bins=[-np.inf, *DEFAULT_EDGES, np.inf])[0].tolist()


def test_psi_of_identical_counts_is_zero_and_same_distribution_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    train = histogram(rng.normal(MEAN, SD, 100_000))
    assert psi(train, train) == 0.0
    assert psi(train, histogram(rng.normal(MEAN, SD, 100_000))) < 0.01


def test_psi_of_a_three_sd_shift_is_far_above_the_significance_threshold() -> None:
    rng = np.random.default_rng(4)
    train = histogram(rng.normal(MEAN, SD, 100_000))
    live = histogram(rng.normal(MEAN + 3 * SD, SD, 300))
    assert psi(train, live) > 0.2


def test_psi_of_unshifted_windows_of_realistic_size_stays_below_moderate() -> None:
    # A few hundred requests per minute: the sampling noise of 10 buckets must stay small.
    # (With only 100 rows about 1 window in 8 passes 0.2: PSI needs >= ~300 live rows.)
    rng = np.random.default_rng(5)
    train = histogram(rng.normal(MEAN, SD, 100_000))
    values = [psi(train, histogram(rng.normal(MEAN, SD, 300))) for _ in range(1000)]
    assert np.percentile(values, 99) < 0.1
    assert max(values) < 0.2


def test_psi_matches_a_numpy_formula_and_handles_empty_buckets() -> None:
    expected, actual, eps = [50, 30, 20, 0], [10, 30, 40, 20], 1e-4
    e = np.maximum(np.array(expected) / 100, eps)
    a = np.maximum(np.array(actual) / 100, eps)
    assert psi(expected, actual, eps) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert math.isfinite(psi(expected, actual, eps))


def test_psi_without_data_is_nan_and_mismatched_buckets_are_an_error() -> None:
    assert math.isnan(psi([0, 0], [1, 2]))
    assert math.isnan(psi([1, 2], [0, 0]))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2], epsilon=0)


# --------------------------------------------------------------------------- z-score


def test_z_score_is_the_standard_score_of_the_window_mean() -> None:
    assert z_score(0.6, 0.5, 0.2, 100) == pytest.approx((0.6 - 0.5) / (0.2 / 10))
    assert z_score(0.5, 0.5, 0.2, 100) == 0.0
    assert standardized_shift(1.1, 0.5, 0.2) == pytest.approx(3.0)


@pytest.mark.parametrize(("n_live", "train_std"), [(0, 0.2), (10, 0.0), (10, math.nan)])
def test_z_score_is_nan_without_live_data_or_training_spread(n_live: int, train_std: float) -> None:
    assert math.isnan(z_score(0.5, 0.5, train_std, n_live))


def test_standardized_shift_is_nan_without_training_spread() -> None:
    assert math.isnan(standardized_shift(0.6, 0.5, 0.0))
    assert math.isnan(standardized_shift(0.6, 0.5, math.nan))


@pytest.mark.parametrize("n_live", [100, 300, 1500])
def test_unshifted_windows_rarely_pass_three(n_live: int) -> None:
    # Under no drift z ~ N(0, 1): |z| > 3 in 0.27 % of windows. Allow 1 % of 2000.
    rng = np.random.default_rng(n_live)
    train = stats_of(rng.normal(MEAN, SD, 50_000))
    z = [z_score(*_window_z_args(rng, train, n_live, 0.0)) for _ in range(2000)]
    assert sum(abs(v) > 3 for v in z) <= 20


@pytest.mark.parametrize("n_live", [30, 100, 300, 1500])
def test_a_three_sd_shift_of_x1_always_fires(n_live: int) -> None:
    rng = np.random.default_rng(n_live + 1)
    train = stats_of(rng.normal(MEAN, SD, 50_000))
    z = [z_score(*_window_z_args(rng, train, n_live, 3.0)) for _ in range(500)]
    assert min(z) > 3


def test_the_simpler_unscaled_score_would_sit_on_the_threshold() -> None:
    # Why z_score divides by the standard error: (live - train) / sd of a 3-sd shift
    # hovers around 3 and would fire only about half the time.
    rng = np.random.default_rng(11)
    fired = [standardized_shift(live_stats(rng, 300, 3.0)[0], MEAN, SD) > 3 for _ in range(500)]
    assert 0.3 < sum(fired) / len(fired) < 0.7


def _window_z_args(
    rng: np.random.Generator, train: RunningStats, n_live: int, shift_sd: float
) -> tuple[float, float, float, int]:
    live_mean, n = live_stats(rng, n_live, shift_sd)
    return live_mean, train.mean, train.stddev, n


def test_pure_python_random_gives_the_same_verdicts() -> None:
    # The consumer never sees numpy: a stream from random.gauss must behave the same.
    rng = random.Random(2)
    train = RunningStats()
    train.update(rng.gauss(MEAN, SD) for _ in range(20_000))
    live = RunningStats()
    live.update(rng.gauss(MEAN + 3 * SD, SD) for _ in range(300))
    assert z_score(live.mean, train.mean, train.stddev, live.count) > 3
