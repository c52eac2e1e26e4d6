"""The rollout's gates (hosttools/rollout_gates.py), on generated distributions and
through a real HTTP server speaking Prometheus's query API."""

from __future__ import annotations

import bisect
import json
import math
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
from modelserve.hosttools.rollout_gates import Thresholds, judge, psi, quantile

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
    assert verdicts() == {"requests": True, "errors": True, "latency": True, "outputs": True}


@given(st.floats(0.011, 1.0))
def test_a_candidate_failing_beyond_the_limit_fails_the_error_gate(share: float) -> None:
    status = {"200": 1000 * (1 - share), "500": 1000 * share}
    assert verdicts(target_status=status) == {
        "requests": True, "errors": False, "latency": True, "outputs": True}  # fmt: skip


@given(st.floats(0.0, 0.005))
def test_errors_production_has_too_do_not_fail_the_candidate(share: float) -> None:
    status = {"200": 1000 * (1 - share), "502": 1000 * share}
    assert verdicts(target_status=status, production_status=status)["errors"]


@given(st.floats(0.1, 5.0))
def test_a_slow_candidate_fails_the_latency_gate(extra_s: float) -> None:
    slow = cumulative([0.004 + extra_s] * 900 + [0.02 + extra_s] * 100)
    assert verdicts(target_latency=slow) == {
        "requests": True, "errors": True, "latency": False, "outputs": True}  # fmt: skip


@given(st.sampled_from(["0.26", "1.36", "+Inf"]))
def test_a_candidate_with_other_answers_fails_the_output_gate(bucket: str) -> None:
    other = {bucket: 1000.0}
    assert verdicts(target_outputs=other) == {
        "requests": True, "errors": True, "latency": True, "outputs": False}  # fmt: skip


@given(st.floats(0, 99.9))
def test_without_enough_requests_nothing_passes_on_trust(requests: float) -> None:
    assert not verdicts(target_status={"200": requests})["requests"]


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
    """Answers /api/v1/query from SERIES: {(metric, route, colour): {label value: n}}."""

    series: ClassVar[dict[tuple[str, str, str], tuple[str, dict[str, float]]]] = {}
    queries: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        expression = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        self.queries.append(expression)
        result = []
        for (metric, route, colour), (label, values) in self.series.items():
            if f'{metric}{{route="{route}",colour="{colour}"}}' in expression:
                result = [{"metric": {label: k}, "value": [0, str(v)]} for k, v in values.items()]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def serve(route: str, target_outputs: dict[str, float]) -> None:
    latency = {str(le): n for le, n in cumulative([0.004] * 500).items()}
    outputs = {"0.54": 250.0, "0.67": 250.0}
    FakePrometheus.queries = []
    FakePrometheus.series = {
        ("modelserve_route_requests_total", route, "blue"): ("status", {"200": 500.0}),
        ("modelserve_route_requests_total", "production", "green"): ("status", {"200": 500.0}),
        ("modelserve_route_upstream_seconds_bucket", route, "blue"): ("le", latency),
        ("modelserve_route_upstream_seconds_bucket", "production", "green"): ("le", latency),
        ("modelserve_output_bucket_total", route, "blue"): ("le", target_outputs),
        ("modelserve_output_bucket_total", "production", "green"): ("le", outputs),
    }


@pytest.mark.parametrize(("phase", "route"), [("shadow", "shadow"), ("canary", "production")])
def test_the_command_judges_the_phases_route_over_the_window(
    prometheus: str, capsys: pytest.CaptureFixture[str], phase: str, route: str
) -> None:
    serve(route, {"0.54": 250.0, "0.67": 250.0})
    argv = ["--prometheus", prometheus, "--phase", phase, "--target", "blue",
            "--production", "green", "--window", "45"]  # fmt: skip
    assert rollout_gates.main(argv) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"], verdict
    assert all("[45s]" in q for q in FakePrometheus.queries)
    serve(route, {"1.36": 500.0})
    assert rollout_gates.main(argv) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert not verdict["passed"]
    assert [g["gate"] for g in verdict["gates"] if not g["passed"]] == ["outputs"]


def test_an_unreachable_prometheus_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--prometheus", "http://127.0.0.1:9", "--phase", "canary", "--target", "blue",
            "--production", "green", "--window", "30"]  # fmt: skip
    assert rollout_gates.main(argv) == 2
    assert "cannot read Prometheus at http://127.0.0.1:9" in capsys.readouterr().err
