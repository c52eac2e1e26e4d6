#!/usr/bin/env python3
"""Judge a rollout step from Prometheus: may the target colour take more traffic?

Usage (by the bluegreen role's rollout, on the host):
    rollout_gates.py --phase shadow|canary --target blue --production green
        --window SECONDS --lag SECONDS (or --start UNIX_TIME --end UNIX_TIME)
        [--prometheus http://127.0.0.1:9090] [thresholds, see --help]

Compares what the target answered in the window (ending --lag seconds ago, which
Prometheus has surely scraped) with what production
answered: in the shadow phase the target's copies of production requests (route
"shadow") against production's own answers; in a canary step the share of /predict the
target served against the rest (both route "production"). The request counts and
latencies are nginx's (modelserve_route_*, from its access logs), the answers' buckets
the handler's (modelserve_output_*); each is the difference of the raw counters at the
two instants (a series missing at the start counts from 0, so a status first seen in the
step counts in full). Gates:

- requests: the target answered at least --min-requests (no evidence, no verdict: fail);
- errors: its 5xx share is at most --max-error-share and at most production's plus
  --error-share-margin;
- rejections: its other non-2xx share (400, 401...) is at most production's plus
  --error-share-margin (clients' bad requests are refused by both alike);
- latency: its p99 is at most --max-latency-ratio x production's p99 + --latency-slack-s;
- outputs: the PSI of its answers' distribution against production's is at most
  --max-output-psi plus what sampling noise alone gives at these counts (the 99.9 %
  quantile of PSI between two samples of one distribution), so a small step is not
  failed by chance.

Prints one JSON object: {"passed": bool, "gates": [{"gate", "metric", "value", "limit",
"passed"}...]}, and exits 0; exits 2 with a message when Prometheus cannot answer.
Standalone (the host's python3, standard library only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

# Proportions below this count as this much in the PSI: an empty bucket costs a large but
# finite amount. The drift consumer's (modelserve.drift.stats) definition; a unit test
# keeps the two equal.
PSI_EPSILON = 1e-4
PHASE_ROUTES = {"shadow": "shadow", "canary": "production"}
# How sure the outputs gate is that a PSI above its limit is not sampling noise.
NOISE_CONFIDENCE = 0.999

Query = Callable[[str, float], list[tuple[dict[str, str], float]]]


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
    In the +Inf bucket: the highest finite bound. Counts are made monotonic first (as
    histogram_quantile does), since differences taken apart need not be."""
    bounds = sorted(cumulative)
    counts = [cumulative[bound] for bound in bounds]
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    if not bounds or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
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


def share(by_status: Mapping[str, float], failed: Callable[[str], bool]) -> float | None:
    """The share of answers whose status ``failed`` says failed; None without answers."""
    total = sum(by_status.values())
    if total <= 0:
        return None
    return sum(n for status, n in by_status.items() if failed(status)) / total


def is_server_error(status: str) -> bool:
    return status.startswith("5")


def is_rejection(status: str) -> bool:
    return not status.startswith(("2", "5"))


def psi_noise(buckets: int, n_target: float, n_production: float) -> float:
    """The PSI two samples of one distribution exceed with probability 1 - NOISE_CONFIDENCE:
    PSI x n1 n2 / (n1 + n2) is about chi-squared with buckets - 1 degrees of freedom
    (Wilson-Hilferty's approximation of its quantile)."""
    k = max(buckets - 1, 1)
    z = NormalDist().inv_cdf(NOISE_CONFIDENCE)
    chi2 = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return chi2 * (1 / n_target + 1 / n_production)


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
    target_errors = share(target_status, is_server_error)
    production_errors = share(production_status, is_server_error)
    error_limit = min(
        thresholds.max_error_share, (production_errors or 0.0) + thresholds.error_share_margin
    )
    gates.append(Gate("errors", "target 5xx share", target_errors, error_limit,
                      target_errors is not None and target_errors <= error_limit))  # fmt: skip
    target_rejections = share(target_status, is_rejection)
    rejection_limit = (
        share(production_status, is_rejection) or 0.0
    ) + thresholds.error_share_margin
    gates.append(Gate("rejections", "target share of other non-2xx answers (4xx)",
                      target_rejections, rejection_limit,
                      target_rejections is not None
                      and target_rejections <= rejection_limit))  # fmt: skip
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
    n_target, n_production = sum(target_outputs.values()), sum(production_outputs.values())
    psi_limit = thresholds.max_output_psi + (
        psi_noise(len(buckets), n_target, n_production) if n_target > 0 and n_production > 0 else 0
    )
    gates.append(Gate("outputs", metric, None if math.isnan(index) else index, psi_limit,
                      not math.isnan(index) and index <= psi_limit))  # fmt: skip
    return gates


def prometheus_query(base_url: str, timeout: float = 10) -> Query:
    """An instant query against Prometheus's HTTP API at a time: [(labels, value)]."""

    def query(expression: str, at: float) -> list[tuple[dict[str, str], float]]:
        parameters = urllib.parse.urlencode({"query": expression, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{base_url}/api/v1/query?{parameters}", timeout=timeout) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expression!r}: {body.get('error')}")
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    return query


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What each counter added between two readings: missing before counts from 0; a
    counter that went down was restarted, and counts from 0 too."""
    return {key: value - before.get(key, 0.0) if value >= before.get(key, 0.0) else value
            for key, value in after.items()}  # fmt: skip


def collect(
    query: Query, phase: str, target: str, production: str, start: float, end: float
) -> list[dict]:
    """The six distributions judge() compares: what the counters added from start to end."""
    route = PHASE_ROUTES[phase]
    sides = [(route, target), ("production", production)]

    def by(label: str, metric: str, route: str, colour: str) -> dict[str, float]:
        expression = f'sum by ({label}) ({metric}{{route="{route}",colour="{colour}"}})'
        readings = [{labels.get(label, ""): v for labels, v in query(expression, at)}
                    for at in (start, end)]  # fmt: skip
        return delta(*readings)

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
    parser.add_argument("--window", type=float, help="seconds judged, ending --lag seconds ago")
    parser.add_argument("--lag", type=float, default=0.0, help="seconds Prometheus may be behind")
    parser.add_argument("--start", type=float, help="instead of --window: unix times")
    parser.add_argument("--end", type=float)
    for name, default in asdict(Thresholds()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=default)
    args = parser.parse_args(argv)
    thresholds = Thresholds(**{name: getattr(args, name) for name in asdict(Thresholds())})
    if args.window is not None:
        # The host's clock is Prometheus's: the window ends what it has surely scraped.
        args.end = time.time() - args.lag
        args.start = args.end - args.window
    elif args.start is None or args.end is None:
        parser.error("give --window, or --start and --end")
    try:
        seen = collect(prometheus_query(args.prometheus), args.phase, args.target,
                       args.production, args.start, args.end)  # fmt: skip
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
