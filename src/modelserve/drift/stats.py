"""Streaming statistics and drift measures shared by the training and the live side.

Pure Python (``math`` only) so that it runs in the Kafka consumer's small image and can be
numpy-free. The buckets both sides count with are ``modelserve.buckets``.

What is here
============
``RunningStats``
    Count, mean and variance of a stream in O(1) memory (Welford's update) and the merge of
    two such summaries (Chan et al.). Conventions for short streams, chosen so that a metric
    never claims a precision it does not have:

    ======  ========  ======================  ===================================
    count   mean      variance (sample, n-1)  population_variance (n)
    ======  ========  ======================  ===================================
    0       NaN       NaN                     NaN
    1       x         NaN (undefined)         0.0
    2+      mean      sum((x-mean)^2)/(n-1)   sum((x-mean)^2)/n
    ======  ========  ======================  ===================================

    NaN rather than 0 because a 0 standard deviation would make every live mean look
    infinitely far away; in PromQL any comparison with NaN is false, so an alert built on
    a NaN training statistic stays silent instead of firing on missing data.

``psi``
    Population Stability Index between two count vectors over the same buckets.
    Rule of thumb: < 0.1 stable, 0.1-0.2 moderate change, > 0.2 significant shift.
    PSI of a small window is noisy: with the default edges and unshifted traffic, a
    window of 100 rows passes 0.2 about 1 time in 8, one of 300 rows practically never
    (99th percentile 0.08), so gate a PSI alert on at least ~300 live rows in the window.

``z_score``
    z of the live WINDOW MEAN: ``(live_mean - train_mean) / (train_std / sqrt(n_live))``.
    Why the standard error and not ``(live_mean - train_mean) / train_std``: with the
    simpler form a shift of exactly 3 training standard deviations gives z ~= 3.0, i.e.
    it sits on the |z| > 3 threshold and fires about half of the time. With the standard
    error, unshifted traffic gives z ~ N(0, 1) whatever the window size (|z| > 3 in 0.27 %
    of evaluations), while a 3-sd shift over a window of n = 300 requests gives
    z ~= 3 * sqrt(300) ~= 52: it fires every time. The price: with large windows even a
    practically irrelevant shift becomes "significant" (0.1 sd at n = 3000 gives z ~= 5.5),
    so pair the alert with an effect size (``standardized_shift``, e.g. > 0.5) or with PSI.

PromQL sketch (``<live>_*`` names are the live side's; ``drift_training_*`` are ours;
sum by (feature) because several colours/instances may export the live side)::

    n_live    = sum by (feature) (increase(<live>_count[5m]))
    live_mean = sum by (feature) (increase(<live>_sum[5m])) / n_live
    z         = (live_mean - on(feature) max by (feature) (drift_training_mean))
                / on(feature) (max by (feature) (drift_training_stddev) / sqrt(n_live))

PSI needs per-bucket (not cumulative) values on both sides: bucket (a, b] is
``bucket{le="b"} - ignoring(le) bucket{le="a"}``, one expression per pair of adjacent
edges (generate them from the edge list), then sum over buckets of
``(live_share - train_share) * ln(live_share / train_share)``, each share floored at
epsilon with ``clamp_min``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NAN = float("nan")

# Proportion that an empty bucket is given in PSI so that ln(0) never happens.
DEFAULT_PSI_EPSILON = 1e-4


@dataclass
class RunningStats:
    """Count, mean and variance of a stream (Welford), mergeable (Chan et al.).

    ``m2`` is the sum of squared deviations from the current mean; keeping it instead of
    a sum of squares avoids the catastrophic cancellation of ``sumsq/n - mean**2``.
    """

    count: int = 0
    # Internal running mean; 0.0 while empty (the public ``mean`` property says NaN then).
    running_mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        """Take one observation into account."""
        self.count += 1
        delta = x - self.running_mean
        self.running_mean += delta / self.count
        # Uses the deviation from the old AND the new mean: this is what keeps it exact.
        self.m2 += delta * (x - self.running_mean)

    def update(self, values: Iterable[float]) -> None:
        """Take several observations into account."""
        for x in values:
            self.add(x)

    def merge(self, other: RunningStats) -> RunningStats:
        """The statistics of both streams together (neither input is changed)."""
        if other.count == 0:
            return RunningStats(self.count, self.running_mean, self.m2)
        if self.count == 0:
            return RunningStats(other.count, other.running_mean, other.m2)
        count = self.count + other.count
        delta = other.running_mean - self.running_mean
        mean = self.running_mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        return RunningStats(count, mean, m2)

    @property
    def mean(self) -> float:
        """Mean; NaN when empty."""
        return self.running_mean if self.count > 0 else NAN

    @property
    def variance(self) -> float:
        """Sample variance (n - 1); NaN for fewer than two observations."""
        return self.m2 / (self.count - 1) if self.count > 1 else NAN

    @property
    def population_variance(self) -> float:
        """Population variance (n); NaN when empty, 0.0 for one observation."""
        return self.m2 / self.count if self.count > 0 else NAN

    @property
    def stddev(self) -> float:
        """Sample standard deviation; NaN for fewer than two observations."""
        return math.sqrt(self.variance) if self.count > 1 else NAN

    @property
    def population_stddev(self) -> float:
        """Population standard deviation; NaN when empty, 0.0 for one observation."""
        return math.sqrt(self.population_variance) if self.count > 0 else NAN

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready state (floats round-trip exactly through Python's json)."""
        return {"count": self.count, "mean": self.running_mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> RunningStats:
        """Inverse of ``to_dict``; rejects impossible states."""
        count, mean, m2 = int(data["count"]), float(data["mean"]), float(data["m2"])
        if count < 0 or m2 < 0 or not math.isfinite(mean) or not math.isfinite(m2):
            raise ValueError(f"invalid RunningStats state: {data!r}")
        return cls(count, mean, m2)


def psi(
    expected_counts: Sequence[float],
    actual_counts: Sequence[float],
    epsilon: float = DEFAULT_PSI_EPSILON,
) -> float:
    """Population Stability Index: sum((a - e) * ln(a / e)) over bucket proportions.

    ``expected_counts`` is the reference (training), ``actual_counts`` the live window,
    per bucket (not cumulative; see ``buckets.decumulate``). Proportions below ``epsilon`` are
    raised to ``epsilon`` so that an empty bucket costs a large but finite amount
    instead of infinity. NaN when either side has no observation: no data, no verdict.
    """
    if len(expected_counts) != len(actual_counts):
        raise ValueError("expected and actual counts must have the same number of buckets")
    if epsilon <= 0:
        raise ValueError("epsilon must be positive")
    expected_total = float(sum(expected_counts))
    actual_total = float(sum(actual_counts))
    if expected_total <= 0 or actual_total <= 0:
        return NAN
    index = 0.0
    for expected, actual in zip(expected_counts, actual_counts, strict=True):
        e = max(expected / expected_total, epsilon)
        a = max(actual / actual_total, epsilon)
        index += (a - e) * math.log(a / e)
    return index


def z_score(live_mean: float, train_mean: float, train_std: float, n_live: float) -> float:
    """z of the mean of ``n_live`` live values against the training distribution.

    ``(live_mean - train_mean) / (train_std / sqrt(n_live))``: how many standard errors
    the window mean lies from the training mean (see the module docstring for why).
    NaN when it cannot be computed (no live values, no or zero training spread).
    """
    if not (n_live > 0 and train_std > 0 and math.isfinite(train_std)):
        return NAN
    return (live_mean - train_mean) / (train_std / math.sqrt(n_live))


def standardized_shift(live_mean: float, train_mean: float, train_std: float) -> float:
    """Effect size: the shift of the mean in training standard deviations (NaN if no sd)."""
    if not (train_std > 0 and math.isfinite(train_std)):
        return NAN
    return (live_mean - train_mean) / train_std
