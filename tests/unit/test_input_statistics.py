"""Live-input statistics of the handler, read back from the metric lines TorchServe parses."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from modelserve.buckets import DEFAULT_EDGES, le_label
from modelserve.handler import (
    DEFAULT_BUCKET_EDGES,
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_OUTPUT_BUCKET_EDGES,
    ROUTES,
    InputStatistics,
    InvalidRequest,
    OutputStatistics,
    input_statistics_settings,
    output_statistics_settings,
    parse_row,
)

TS_METRICS_YAML = Path(sys.modules["ts"].__file__).parent / "configs" / "metrics.yaml"
# [METRICS]name.unit:value|#dim:value,dim:value|#type:COUNTER|#hostname:...,timestamp
METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.\w+:([^|]+)\|#([^|]*)\|#type:(\w+)\|")

Sent = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def flush_and_read(
    stats: InputStatistics | OutputStatistics,
    caplog: pytest.LogCaptureFixture,
    every_series: bool = False,
) -> Sent:
    """Flush into TorchServe's real metrics cache; sum the counter lines it logs per series."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        stats.flush(MetricsCacheYamlImpl(str(TS_METRICS_YAML)), every_series=every_series)
    sent: Sent = defaultdict(float)
    for record in caplog.records:
        match = METRIC_LINE.search(record.getMessage())
        if match:
            name, value, dims, kind = match.groups()
            assert kind == "COUNTER"
            labels = tuple(tuple(d.split(":", 1)) for d in dims.split(","))
            sent[name, labels] += float(value)
    return dict(sent)


def series(sent: Sent, name: str, **labels: str) -> float:
    return sent.get((f"modelserve_input_{name}", tuple(labels.items())), 0.0)


def test_sums_and_buckets_match_numpy(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(7)
    rows = [[rng.gauss(0.5, 0.3), rng.gauss(-1.0, 2.0)] for _ in range(500)]
    rows += [[0.1, 0.9], [0.9, -5.0]]  # values on an edge belong to that edge's bucket
    stats = InputStatistics()
    stats.observe(rows[:200])
    stats.observe(rows[200:])
    sent = flush_and_read(stats, caplog)
    data = np.array(rows)
    for i, feature in enumerate(("x1", "x2")):
        values = data[:, i]
        count = series(sent, "values_total", feature=feature)
        total = series(sent, "sum_positive_total", feature=feature) - series(
            sent, "sum_negative_total", feature=feature
        )
        assert count == len(rows)
        assert total == pytest.approx(values.sum())
        assert series(sent, "sum_squares_total", feature=feature) == pytest.approx(
            (values**2).sum()
        )
        # le semantics: a bucket holds the values > the previous edge and <= its own.
        edges = [-math.inf, *DEFAULT_BUCKET_EDGES, math.inf]
        for low, high in itertools.pairwise(edges):
            expected = int(((values > low) & (values <= high)).sum())
            label = le_label(high)
            assert series(sent, "bucket_total", feature=feature, le=label) == expected, label


def test_a_flush_sends_only_what_came_since_the_last(caplog: pytest.LogCaptureFixture) -> None:
    stats = InputStatistics()
    assert flush_and_read(stats, caplog) == {}
    stats.observe([[0.2, 0.6]])
    assert series(flush_and_read(stats, caplog), "values_total", feature="x1") == 1
    assert flush_and_read(stats, caplog) == {}
    stats.observe([[0.3, 0.7], [0.4, 0.8]])
    assert series(flush_and_read(stats, caplog), "values_total", feature="x2") == 2


def test_no_counter_is_sent_a_negative_or_zero_increment(caplog: pytest.LogCaptureFixture) -> None:
    stats = InputStatistics()
    stats.observe([[-3.0, 0.0], [-1.0, 0.0]])
    sent = flush_and_read(stats, caplog)
    assert all(value > 0 for value in sent.values()), sent
    assert series(sent, "sum_negative_total", feature="x1") == 4.0
    assert series(sent, "sum_positive_total", feature="x1") == 0.0


def test_the_first_flush_creates_every_series_at_zero(caplog: pytest.LogCaptureFixture) -> None:
    sent = flush_and_read(InputStatistics(), caplog, every_series=True)
    per_feature = 4 + len(DEFAULT_BUCKET_EDGES) + 1  # 4 sums and every bucket
    assert len(sent) == 2 * per_feature
    assert set(sent.values()) == {0.0}
    assert series(sent, "bucket_total", feature="x2", le="+Inf") == 0.0
    assert ("modelserve_input_bucket_total", (("feature", "x2"), ("le", "+Inf"))) in sent


def test_bucket_labels_are_the_drift_consumers() -> None:
    """Live and training histograms are compared bucket by bucket, by label."""
    assert DEFAULT_BUCKET_EDGES == DEFAULT_EDGES
    stats = InputStatistics(edges=[*DEFAULT_EDGES, 1.0, 2, 1e7])
    assert stats.labels == tuple(le_label(edge) for edge in (*stats.edges, math.inf))
    assert stats.labels[-3:] == ("2.0", "1e+07", "+Inf")


@pytest.mark.parametrize(
    ("features", "edges"),
    [([], [0.5]), (["x1", "x1"], [0.5]), (["x1", "x2"], []), (["x1", "x2"], [0.5, 0.1]),
     (["x1", "x2"], [0.1, 0.1]), (["x1", "x2"], [0.1, math.nan]), (["x1", "x2"], ["a"])],
)  # fmt: skip
def test_bad_settings_are_refused(features: list[str], edges: list[object]) -> None:
    with pytest.raises(ValueError, match=r"features|edges|float"):
        InputStatistics(features, edges)  # type: ignore[arg-type]


def test_the_features_set_the_row_width() -> None:
    """A model of three inputs: the config names three features, rows carry three numbers."""
    config = {"handler": {"input_features": ["a", "b", "c"]}}
    stats, _ = input_statistics_settings(config)
    assert stats.features == ("a", "b", "c")
    assert parse_row(b'{"data": [1, 2, 3]}', len(stats.features)) == [1.0, 2.0, 3.0]
    with pytest.raises(InvalidRequest, match="exactly 3 numbers"):
        parse_row(b'{"data": [1, 2]}', len(stats.features))


def test_settings_come_from_the_model_config() -> None:
    config = {"handler": {"input_bucket_edges": [-1, 0, 1], "input_metrics_interval_s": 0.5}}
    stats, interval = input_statistics_settings(config)
    assert stats.labels == ("-1.0", "0.0", "1.0", "+Inf")
    assert interval == 0.5


@pytest.mark.parametrize(
    "config",
    [None, {"handler": "nope"}, {"handler": {"input_bucket_edges": [2, 1]}},
     {"handler": {"input_metrics_interval_s": 0}}, {"handler": {"input_metrics_interval_s": "x"}},
     {"handler": {"input_features": ["x1", "x1"], "input_metrics_interval_s": 5}}],
)  # fmt: skip
def test_bad_settings_fall_back_to_the_defaults(config: object) -> None:
    stats, interval = input_statistics_settings(config)
    assert stats.edges == DEFAULT_BUCKET_EDGES
    assert interval == DEFAULT_FLUSH_INTERVAL_S


def test_the_bucket_edges_are_written_in_one_file_only() -> None:
    """Handler, consumer and Prometheus rules take them from bucket_edges.json: a copy of
    the list anywhere else is a second definition that could drift apart from it."""
    edges_file = REPO / "src/modelserve/bucket_edges.json"
    assert tuple(json.loads(edges_file.read_text())) == DEFAULT_EDGES
    written = re.compile(r"0\.1,\s*0\.2,\s*0\.3,\s*0\.4")
    copies = [
        path.relative_to(REPO)
        for pattern in ("*.py", "*.yml", "*.yaml", "*.j2", "*.json")
        for top in ("src", "roles", "files", "inventory", "playbooks")
        for path in (REPO / top).rglob(pattern)
        if path != edges_file and written.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert copies == []


# --- the answers, per route --------------------------------------------------------------


@given(
    outputs=st.lists(
        st.tuples(st.sampled_from([*ROUTES, "direct"]), st.floats(-1e6, 1e6)), max_size=60
    )
)
def test_output_buckets_match_numpy_per_route(outputs: list[tuple[str, float]]) -> None:
    edges = [-1.0, 0.0, 0.5, 1.0, 10.0]
    stats = OutputStatistics(edges)
    for route, value in outputs:
        stats.observe(route, [value])
    sent = flush_into(stats, MetricsCacheYamlImpl(str(TS_METRICS_YAML)))
    for route in [*ROUTES, "direct"]:
        values = np.array([v for r, v in outputs if r == route], dtype=float)
        # le semantics: a value equal to an edge belongs to that edge's bucket.
        counts = np.histogram(values, [-np.inf, *np.nextafter(edges, np.inf), np.inf])[0]
        labels = [le_label(edge) for edge in [*edges, math.inf]]
        for label, count in zip(labels, counts, strict=True):
            assert (
                sent.get(("modelserve_output_bucket_total", (("route", route), ("le", label))), 0)
                == count
            )
        assert sent.get(("modelserve_output_values_total", (("route", route),)), 0) == len(values)


def flush_into(stats: OutputStatistics, cache: MetricsCacheYamlImpl) -> Sent:
    """flush_and_read without pytest's caplog (Hypothesis runs the test many times)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        stats.flush(cache)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    sent: Sent = defaultdict(float)
    for record in records:
        match = METRIC_LINE.search(record.getMessage())
        if match:
            name, value, dims, _ = match.groups()
            sent[name, tuple(tuple(d.split(":", 1)) for d in dims.split(","))] += float(value)
    return dict(sent)


def test_the_first_output_flush_creates_every_series_at_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = flush_and_read(OutputStatistics(), caplog, every_series=True)
    routes = [*ROUTES, "direct"]
    assert len(sent) == len(routes) * (1 + len(DEFAULT_OUTPUT_BUCKET_EDGES) + 1)
    assert set(sent.values()) == {0.0}


@pytest.mark.parametrize(
    ("config", "edges"),
    [
        ({"handler": {"output_bucket_edges": [0, 1, 2]}}, (0.0, 1.0, 2.0)),
        ({"handler": {"output_bucket_edges": [2, 1]}}, DEFAULT_OUTPUT_BUCKET_EDGES),
        ({"handler": {"output_bucket_edges": "nope"}}, DEFAULT_OUTPUT_BUCKET_EDGES),
        ({}, DEFAULT_OUTPUT_BUCKET_EDGES),
    ],
)
def test_output_edges_come_from_the_model_config(config: object, edges: tuple[float, ...]) -> None:
    assert output_statistics_settings(config).edges == edges


def test_the_delivered_model_sets_output_edges_around_its_answers() -> None:
    import yaml

    config = yaml.safe_load((REPO / "files/model/model_config.yaml").read_text())
    edges = output_statistics_settings(config).edges
    assert edges != DEFAULT_OUTPUT_BUCKET_EDGES
    # The reference input's answer falls inside the edges, not in an end bucket.
    assert edges[0] < 0.65 < edges[-1]
