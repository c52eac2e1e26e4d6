"""Fixed-edge buckets: the one definition the live side (the handler) and the training
side (the drift consumer) count with, so that their histograms compare bucket by bucket.

Pure Python: it runs inside TorchServe's workers and in the drift image alike.

``BucketCounts``
    Counts over FIXED bucket edges. Bucket ``i`` holds ``edges[i-1] < x <= edges[i]``
    (upper bound inclusive, like a Prometheus histogram ``le``); values below the first
    edge fall in the first bucket (-inf, edges[0]], values above the last in
    (edges[-1], +inf). The edges never move with the data: training and live side must
    count with the very same edges, or PSI compares different things.

``DEFAULT_EDGES``
    The platform's edges, read from ``bucket_edges.json`` (0.1, 0.2, ..., 0.9). They are
    ``DEFAULT_STANDARD_EDGES`` (-2, -1.5, ..., +2 standard deviations, half a standard
    deviation apart) mapped through the reference training distribution of this project,
    N(0.5, 0.2) for both x1 and x2. Ten buckets: narrow enough that a shift of half a
    standard deviation moves visible mass, wide enough that a live window of a few
    hundred requests has several rows in most buckets (the two end buckets each expect
    2.3 %), and the labels are short exact decimals that both sides print identically.
    For another reference distribution use ``edges_for_reference(mean, std)``.

``le_label``
    How an edge is written in the ``le`` label: exactly as prometheus_client writes
    histogram buckets (``0.1``, ``1.0``, ``+Inf``), so a live side that uses a
    prometheus_client ``Histogram`` with the same edges produces identical label values.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Bucket edges in standard deviations from the reference mean: half-sd steps to +-2 sd.
DEFAULT_STANDARD_EDGES: tuple[float, ...] = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
# The project's reference training distribution (roles/locust defaults: means 0.5, sd 0.2).
DEFAULT_REFERENCE_MEAN = 0.5
DEFAULT_REFERENCE_STD = 0.2
# The platform's edges, defined once in bucket_edges.json next to this module: Ansible
# renders the same file into the model config, the consumer's environment and the
# Prometheus rules. A unit test checks they equal edges_for_reference(0.5, 0.2).
EDGES_FILE = Path(__file__).with_name("bucket_edges.json")
DEFAULT_EDGES: tuple[float, ...] = tuple(
    float(edge) for edge in json.loads(EDGES_FILE.read_text(encoding="utf-8"))
)


def validate_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Edges as a tuple of floats; at least one, finite and strictly increasing."""
    result = tuple(float(edge) for edge in edges)
    if not result:
        raise ValueError("bucket edges must not be empty")
    if not all(math.isfinite(edge) for edge in result):
        raise ValueError(f"bucket edges must be finite numbers: {result!r}")
    if any(lower >= upper for lower, upper in itertools.pairwise(result)):
        raise ValueError(f"bucket edges must be strictly increasing: {result!r}")
    return result


def edges_for_reference(
    mean: float,
    std: float,
    standard_edges: Sequence[float] = DEFAULT_STANDARD_EDGES,
    digits: int = 6,
) -> tuple[float, ...]:
    """Edges ``mean + std * z`` for each standard edge z, rounded to ``digits`` decimals.

    Rounding keeps labels short and identical on both sides (0.5 + 0.2 * -1 is
    0.30000000000000004 in binary floating point; rounded it is 0.3).
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError("reference mean must be finite and std positive")
    return validate_edges(round(mean + std * z, digits) for z in standard_edges)


def le_label(edge: float) -> str:
    """The ``le`` label value of an upper bound, as prometheus_client writes it."""
    if edge == math.inf:
        return "+Inf"
    if edge == -math.inf:
        return "-Inf"
    if math.isnan(edge):
        return "NaN"
    text = repr(float(edge))
    dot = text.find(".")
    # Go (and so prometheus_client) switches to an exponent for large positive values.
    if edge > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


@dataclass
class BucketCounts:
    """Counts of observations over fixed edges; ``len(edges) + 1`` buckets."""

    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.edges = validate_edges(self.edges)
        if not self.counts:
            self.counts = [0] * (len(self.edges) + 1)
        if len(self.counts) != len(self.edges) + 1 or any(c < 0 for c in self.counts):
            raise ValueError("counts must be len(edges) + 1 non-negative integers")

    def index(self, x: float) -> int:
        """Bucket of ``x``: the number of edges strictly below it (upper bound inclusive)."""
        return bisect.bisect_left(self.edges, x)

    def add(self, x: float) -> None:
        """Count one observation."""
        self.counts[self.index(x)] += 1

    @property
    def total(self) -> int:
        """Number of observations counted."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le label, observations <= le)`` for each edge and ``+Inf``, like a histogram."""
        bounds = [*self.edges, math.inf]
        running = 0
        result = []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            result.append((le_label(bound), running))
        return result

    def merge(self, other: BucketCounts) -> BucketCounts:
        """Counts of both (edges must be equal)."""
        if self.edges != other.edges:
            raise ValueError("cannot merge bucket counts over different edges")
        return BucketCounts(
            self.edges, [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        )


def decumulate(cumulative: Sequence[float]) -> list[float]:
    """Per-bucket counts from cumulative ``le`` counts (as scraped from Prometheus)."""
    result = []
    previous = 0.0
    for value in cumulative:
        result.append(value - previous)
        previous = value
    return result
