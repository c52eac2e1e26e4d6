#!/usr/bin/env python3
"""Judge a rollout step from Prometheus: may the target colour take more traffic?

Usage (by the bluegreen role's rollout, on the host):
    rollout_gates.py --phase shadow|canary --target blue --production green --window 60
        [--prometheus http://127.0.0.1:9090] [thresholds, see --help]

Compares, over the last --window seconds, what the target answered with what production
answered: in the shadow phase the target's copies of production requests (route
"shadow") against production's own answers; in a canary step the share of /predict the
target served against the rest (both route "production"). The request counts and
latencies are nginx's (modelserve_route_*, from its access logs), the answers' buckets
the handler's (modelserve_output_*). Gates:

- requests: the target answered at least --min-requests (no evidence, no verdict: fail);
- errors: its 5xx share is at most --max-error-share and at most production's plus
  --error-share-margin;
- latency: its p99 is at most --max-latency-ratio x production's p99 + --latency-slack-s;
- outputs: the PSI of its answers' distribution against production's is at most
  --max-output-psi (the same requests in shadow, the same mix in a canary step).

Prints one JSON object: {"passed": bool, "gates": [{"gate", "metric", "value", "limit",
"passed"}...]}, and exits 0; exits 2 with a message when Prometheus cannot answer.
Standalone (the host's python3, standard library only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

# Proportions below this count as this much in the PSI: an empty bucket costs a large but
# finite amount. The drift consumer's (modelserve.drift.stats) definition; a unit test
# keeps the two equal.
PSI_EPSILON = 1e-4
PHASE_ROUTES = {"shadow": "shadow", "canary": "production"}

Query = Callable[[str], list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class Gate:
    gate: str
    metric: str
    value: float | None
    limit: float | None
    passed: bool


@dataclass(frozen=True)
class Thresholds:
    min_requests: float = 100
    max_error_share: float = 0.01
    error_share_margin: float = 0.005
    max_latency_ratio: float = 2.0
    latency_slack_s: float = 0.025
    max_output_psi: float = 0.1


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (counts per bucket);
    NaN when either side is empty."""
    expected_total, actual_total = float(sum(expected)), float(sum(actual))
    if expected_total <= 0 or actual_total <= 0:
        return math.nan
    index = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = max(e_count / expected_total, epsilon)
        a = max(a_count / actual_total, epsilon)
        index += (a - e) * math.log(a / e)
    return index


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The q-quantile of a Prometheus histogram's cumulative bucket counts {le: count},
    interpolated within its bucket as histogram_quantile does; None without observations.
    In the +Inf bucket: the highest finite bound."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def error_share(by_status: Mapping[str, float]) -> float | None:
    """The share of 5xx answers; None without answers."""
    total = sum(by_status.values())
    if total <= 0:
        return None
    return sum(n for status, n in by_status.items() if status.startswith("5")) / total


def judge(
    thresholds: Thresholds,
    target_status: Mapping[str, float],
    production_status: Mapping[str, float],
    target_latency: Mapping[float, float],
    production_latency: Mapping[float, float],
    target_outputs: Mapping[str, float],
    production_outputs: Mapping[str, float],
) -> list[Gate]:
    """Every gate's verdict. Without evidence (no requests, no latencies, no answers on
    one side) a gate fails: a rollout goes on only on what it has seen."""
    requests = sum(target_status.values())
    gates = [Gate("requests", "target requests", requests, thresholds.min_requests,
                  requests >= thresholds.min_requests)]  # fmt: skip
    target_errors, production_errors = error_share(target_status), error_share(production_status)
    error_limit = min(
        thresholds.max_error_share, (production_errors or 0.0) + thresholds.error_share_margin
    )
    gates.append(Gate("errors", "target 5xx share", target_errors, error_limit,
                      target_errors is not None and target_errors <= error_limit))  # fmt: skip
    target_p99, production_p99 = quantile(0.99, target_latency), quantile(0.99, production_latency)
    latency_limit = (
        thresholds.max_latency_ratio * production_p99 + thresholds.latency_slack_s
        if production_p99 is not None
        else None
    )
    gates.append(Gate("latency", "target p99 latency (s)", target_p99, latency_limit,
                      None not in (target_p99, latency_limit)
                      and target_p99 <= latency_limit))  # fmt: skip
    buckets = sorted(set(target_outputs) | set(production_outputs), key=float)
    index = psi([production_outputs.get(b, 0.0) for b in buckets],
                [target_outputs.get(b, 0.0) for b in buckets])  # fmt: skip
    metric = "PSI of the target's answers against production's"
    sides = (("production", production_outputs), ("the target", target_outputs))
    uncounted = [side for side, seen in sides if sum(seen.values()) <= 0]
    if uncounted:
        # A colour still running a handler from before the answers were counted (a restart
        # pending since an upgrade), or its own handler, or no traffic at all.
        metric += f" (no answers counted for {' and '.join(uncounted)}: see status.yml)"
    gates.append(Gate("outputs", metric, None if math.isnan(index) else index,
                      thresholds.max_output_psi,
                      not math.isnan(index) and index <= thresholds.max_output_psi))  # fmt: skip
    return gates


def prometheus_query(base_url: str, timeout: float = 10) -> Query:
    """An instant query against Prometheus's HTTP API: [(labels, value)]."""

    def query(expression: str) -> list[tuple[dict[str, str], float]]:
        url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expression!r}: {body.get('error')}")
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    return query


def collect(query: Query, phase: str, target: str, production: str, window_s: int) -> list[dict]:
    """The six distributions judge() compares, from Prometheus."""
    route = PHASE_ROUTES[phase]
    sides = [(route, target), ("production", production)]

    def by(label: str, metric: str, route: str, colour: str) -> dict[str, float]:
        selector = f'{metric}{{route="{route}",colour="{colour}"}}'
        rows = query(f"sum by ({label}) (increase({selector}[{window_s}s]))")
        return {labels.get(label, ""): value for labels, value in rows}

    statuses = [by("status", "modelserve_route_requests_total", *side) for side in sides]
    latencies = [
        {
            float(le): n
            for le, n in by("le", "modelserve_route_upstream_seconds_bucket", *side).items()
        }
        for side in sides
    ]
    outputs = [by("le", "modelserve_output_bucket_total", *side) for side in sides]
    return [*statuses, *latencies, *outputs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--phase", choices=sorted(PHASE_ROUTES), required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--production", required=True)
    parser.add_argument("--window", type=int, required=True, help="seconds")
    for name, default in asdict(Thresholds()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=default)
    args = parser.parse_args(argv)
    thresholds = Thresholds(**{name: getattr(args, name) for name in asdict(Thresholds())})
    try:
        seen = collect(prometheus_query(args.prometheus), args.phase, args.target,
                       args.production, args.window)  # fmt: skip
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        print(f"rollout_gates: cannot read Prometheus at {args.prometheus}: {err}", file=sys.stderr)
        return 2
    gates = judge(thresholds, *seen)
    json.dump({"passed": all(g.passed for g in gates), "gates": [asdict(g) for g in gates]},
              sys.stdout)  # fmt: skip
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
