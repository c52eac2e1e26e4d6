"""The rollout's gates (hosttools/rollout_gates.py), on generated distributions and
through a real HTTP server speaking Prometheus's query API."""

from __future__ import annotations

import bisect
import json
import math
import random
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelserve.drift.stats import DEFAULT_PSI_EPSILON
from modelserve.drift.stats import psi as drift_psi
from modelserve.hosttools import rollout_gates
from modelserve.hosttools.rollout_gates import Thresholds, delta, judge, psi, quantile

EDGES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
counts = st.lists(st.floats(0, 1e6), min_size=1, max_size=12)


def cumulative(values: list[float], edges: tuple[float, ...] = EDGES) -> dict[float, float]:
    """A Prometheus histogram's buckets {le: count of values <= le} for ``values``."""
    return {le: float(sum(v <= le for v in values)) for le in edges}


@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 1e6), min_size=n, max_size=n),
    st.lists(st.floats(0, 1e6), min_size=n, max_size=n))))  # fmt: skip
def test_psi_is_the_drift_consumers(pair: tuple[list[float], list[float]]) -> None:
    expected, actual = pair
    assert rollout_gates.PSI_EPSILON == DEFAULT_PSI_EPSILON
    ours, theirs = psi(expected, actual), drift_psi(expected, actual)
    assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs)


@given(st.lists(st.floats(0, 20), min_size=1, max_size=300), st.floats(0.01, 0.99))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    found = quantile(q, cumulative(values))
    assert found is not None
    # The rank-th smallest value (histogram_quantile's rank, q x count) is in some bucket;
    # the estimate lies within that bucket's bounds (the last finite bound for +Inf).
    ordered = sorted(values)
    true = ordered[max(math.ceil(q * len(values)) - 1, 0)]
    index = bisect.bisect_left(EDGES, true)
    lower = EDGES[index - 1] if index > 0 else 0.0
    upper = EDGES[index] if not math.isinf(EDGES[index]) else EDGES[index - 1]
    assert lower - 1e-12 <= found <= upper + 1e-12


def test_quantile_interpolates_as_prometheus_does() -> None:
    # 100 observations: 50 <= 0.01, 40 more <= 0.05, 10 more <= 0.1. p99 is 9/10 into
    # the (0.05, 0.1] bucket, as histogram_quantile(0.99, ...) gives.
    buckets = {0.01: 50.0, 0.05: 90.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.99, buckets) == pytest.approx(0.095)
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 10.0, math.inf: 100.0}) == 0.1  # in +Inf: the last bound


ALL_PASS = {"requests": True, "errors": True, "rejections": True, "latency": True, "outputs": True}


def verdicts(**sides: dict) -> dict[str, bool]:
    healthy_status = {"200": 1000.0}
    latency = cumulative([0.004] * 900 + [0.02] * 100)
    outputs = {"0.54": 300.0, "0.67": 400.0, "0.81": 300.0, "+Inf": 0.0}
    seen = {
        "target_status": healthy_status, "production_status": healthy_status,
        "target_latency": latency, "production_latency": latency,
        "target_outputs": outputs, "production_outputs": outputs,
    } | sides  # fmt: skip
    return {gate.gate: gate.passed for gate in judge(Thresholds(), **seen)}


def test_a_candidate_like_production_passes_every_gate() -> None:
    assert verdicts() == ALL_PASS


@given(st.floats(0.011, 1.0))
def test_a_candidate_failing_beyond_the_limit_fails_the_error_gate(share: float) -> None:
    status = {"200": 1000 * (1 - share), "500": 1000 * share}
    assert verdicts(target_status=status) == ALL_PASS | {"errors": False}


@given(st.floats(0.0, 0.01))
def test_a_candidate_failing_as_often_as_production_passes_up_to_the_limit(share: float) -> None:
    status = {"200": 1000 * (1 - share), "502": 1000 * share}
    assert verdicts(target_status=status, production_status=status)["errors"]


@given(st.floats(0.0051, 0.0099))
def test_a_candidate_failing_beyond_productions_margin_fails_below_the_limit(share: float) -> None:
    # Production fails nothing: the margin (0.5 %), not the limit (1 %), is the line.
    status = {"200": 1000 * (1 - share), "500": 1000 * share}
    assert verdicts(target_status=status) == ALL_PASS | {"errors": False}


@given(st.floats(0.006, 1.0), st.sampled_from(["400", "401", "404"]))
def test_a_candidate_refusing_what_production_answers_fails_the_rejection_gate(
    share: float, status: str
) -> None:
    refused = {"200": 1000 * (1 - share), status: 1000 * share}
    assert verdicts(target_status=refused) == ALL_PASS | {"rejections": False}
    # Clients' bad requests, refused by both alike, fail nothing.
    assert verdicts(target_status=refused, production_status=refused) == ALL_PASS


@given(st.floats(0.1, 5.0))
def test_a_slow_candidate_fails_the_latency_gate(extra_s: float) -> None:
    slow = cumulative([0.004 + extra_s] * 900 + [0.02 + extra_s] * 100)
    assert verdicts(target_latency=slow) == ALL_PASS | {"latency": False}


@given(st.sampled_from(["0.26", "1.36", "+Inf"]))
def test_a_candidate_with_other_answers_fails_the_output_gate(bucket: str) -> None:
    other = {bucket: 1000.0}
    assert verdicts(target_outputs=other) == ALL_PASS | {"outputs": False}


@given(st.floats(0, 99.9))
def test_without_enough_requests_nothing_passes_on_trust(requests: float) -> None:
    assert not verdicts(target_status={"200": requests})["requests"]


# The delivered model's output buckets and what share of its answers falls in each, for
# inputs of the training distribution (the 2.3 % end buckets of half-sd steps).
OUTPUT_LABELS = ["0.26", "0.4", "0.54", "0.67", "0.81", "0.95", "1.09", "1.22", "1.36", "+Inf"]
OUTPUT_SHARES = [0.023, 0.044, 0.092, 0.15, 0.191, 0.191, 0.15, 0.092, 0.044, 0.023]


def sample(rng: random.Random, n: int, shares: list[float]) -> dict[str, float]:
    counts = dict.fromkeys(OUTPUT_LABELS, 0.0)
    for label in rng.choices(OUTPUT_LABELS, weights=shares, k=n):
        counts[label] += 1
    return counts


@pytest.mark.parametrize("n_target", [100, 300, 1000])
def test_the_same_model_passes_the_output_gate_at_small_steps(n_target: int) -> None:
    # Without the noise allowance, 100 answers against a fixed limit of 0.1 failed an
    # identical model half the time. 400 steps at 5 %: the chance rate must stay near 0.1 %.
    rng = random.Random(n_target)
    failed = 0
    for _ in range(400):
        target = sample(rng, n_target, OUTPUT_SHARES)
        production = sample(rng, n_target * 19, OUTPUT_SHARES)
        failed += not verdicts(target_outputs=target, production_outputs=production)["outputs"]
    assert failed <= 4


@pytest.mark.parametrize(("n_target", "buckets"), [(100, 2), (300, 1), (1000, 1)])
def test_shifted_answers_fail_the_output_gate(n_target: int, buckets: int) -> None:
    # Answers a bucket (half a standard deviation) lower: caught from 300 answers on; at
    # 100 the noise allowance leaves only shifts of a standard deviation or more.
    rng = random.Random(n_target)
    shifted = [*OUTPUT_SHARES[buckets:], *[0.0] * buckets]
    for _ in range(50):
        target = sample(rng, n_target, shifted)
        production = sample(rng, n_target * 19, OUTPUT_SHARES)
        assert not verdicts(target_outputs=target, production_outputs=production)["outputs"]


@given(
    st.dictionaries(st.sampled_from("abcd"), st.floats(0, 1e6)),
    st.dictionaries(st.sampled_from("abcd"), st.floats(0, 1e6)),
)
def test_delta_counts_new_and_restarted_counters_from_zero(
    before: dict[str, float], after: dict[str, float]
) -> None:
    added = delta(before, after)
    assert set(added) == set(after)
    for key, value in added.items():
        assert 0 <= value <= after[key]
        if after[key] >= before.get(key, 0.0):
            assert value == pytest.approx(after[key] - before.get(key, 0.0))


def test_without_any_evidence_every_gate_fails() -> None:
    empty = {"target_status": {}, "target_latency": {}, "target_outputs": {}}
    assert set(verdicts(**empty).values()) == {False}


def test_a_production_without_counted_answers_is_named() -> None:
    # As after an upgrade: production's restart is pending, its handler counts no answers.
    healthy = {"200": 1000.0}
    latency = cumulative([0.004] * 1000)
    outputs = {"0.67": 1000.0}
    gates = judge(Thresholds(), healthy, healthy, latency, latency, outputs, {"0.67": 0.0})
    assert [(g.gate, g.passed) for g in gates if not g.passed] == [("outputs", False)]
    assert "no answers counted for production" in gates[-1].metric


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query from SERIES: {(metric, route, colour): (label, {value: n})}
    at time END, and from BEFORE (the same shape) at any earlier time."""

    series: ClassVar[dict[tuple[str, str, str], tuple[str, dict[str, float]]]] = {}
    before: ClassVar[dict[tuple[str, str, str], tuple[str, dict[str, float]]]] = {}
    queries: ClassVar[list[tuple[str, float]]] = []

    def do_GET(self) -> None:
        parameters = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        expression, at = parameters["query"][0], float(parameters["time"][0])
        self.queries.append((expression, at))
        result = []
        for (metric, route, colour), (label, values) in (
            self.series if at >= END else self.before
        ).items():
            if f'{metric}{{route="{route}",colour="{colour}"}}' in expression:
                result = [{"metric": {label: k}, "value": [at, str(v)]} for k, v in values.items()]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


START, END = 1_700_000_000.0, 1_700_000_045.0


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def serve(route: str, target_outputs: dict[str, float]) -> None:
    """Counters that production had before the step (and the target had not: created in
    the step, they count from 0), and their values at its end."""
    latency = {str(le): n for le, n in cumulative([0.004] * 500).items()}
    earlier = {str(le): n for le, n in cumulative([0.004] * 9000).items()}
    outputs = {"0.54": 250.0, "0.67": 250.0}
    FakePrometheus.queries = []
    FakePrometheus.before = {
        ("modelserve_route_requests_total", "production", "green"): ("status", {"200": 9000.0}),
        ("modelserve_route_upstream_seconds_bucket", "production", "green"): ("le", earlier),
        ("modelserve_output_bucket_total", "production", "green"): (
            "le", {"0.54": 4500.0, "0.67": 4500.0}),
    }  # fmt: skip
    FakePrometheus.series = {
        ("modelserve_route_requests_total", route, "blue"): ("status", {"200": 500.0}),
        ("modelserve_route_requests_total", "production", "green"): ("status", {"200": 9500.0}),
        ("modelserve_route_upstream_seconds_bucket", route, "blue"): ("le", latency),
        ("modelserve_route_upstream_seconds_bucket", "production", "green"): (
            "le", {le: earlier[le] + latency[le] for le in latency}),
        ("modelserve_output_bucket_total", route, "blue"): ("le", target_outputs),
        ("modelserve_output_bucket_total", "production", "green"): (
            "le", {le: 4500.0 + n for le, n in outputs.items()}),
    }  # fmt: skip


@pytest.mark.parametrize(("phase", "route"), [("shadow", "shadow"), ("canary", "production")])
def test_the_command_judges_the_phases_route_between_start_and_end(
    prometheus: str, capsys: pytest.CaptureFixture[str], phase: str, route: str
) -> None:
    serve(route, {"0.54": 250.0, "0.67": 250.0})
    argv = ["--prometheus", prometheus, "--phase", phase, "--target", "blue",
            "--production", "green", "--start", str(START), "--end", str(END)]  # fmt: skip
    assert rollout_gates.main(argv) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"], verdict
    # Production's step: 500 requests, not the 9,500 it has served since it started.
    production_requests = {g["gate"]: g for g in verdict["gates"]}["requests"]["value"]
    assert production_requests == 500
    assert {at for _, at in FakePrometheus.queries} == {START, END}
    serve(route, {"1.36": 500.0})
    assert rollout_gates.main(argv) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert not verdict["passed"]
    assert [g["gate"] for g in verdict["gates"] if not g["passed"]] == ["outputs"]


def test_an_unreachable_prometheus_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--prometheus", "http://127.0.0.1:9", "--phase", "canary", "--target", "blue",
            "--production", "green", "--start", "0", "--end", "30"]  # fmt: skip
    assert rollout_gates.main(argv) == 2
    assert "cannot read Prometheus at http://127.0.0.1:9" in capsys.readouterr().err
