"""Drift, end to end: live requests against the training data, through the real alerts.

Traffic goes to nginx's /predict on 127.0.0.1, bounded in time. The test bed shortens
the drift window to 1 minute and the alerts' hold to 30 s (inventory/local/group_vars).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest
import requests
from conftest import BASE_URL

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
DRIFT_ALERTS = ("DriftMeanShift", "DriftDistributionShift")
FIRING = 'ALERTS{alertname=~"DriftMeanShift|DriftDistributionShift", alertstate="firing"}'
RATE_PER_SECOND = 40
WINDOW_SECONDS = 60  # prometheus_drift_window in the test bed
HOLD_SECONDS = 30  # prometheus_drift_for in the test bed
FIRING_DEADLINE_SECONDS = 180  # the bound, from the shift to Alertmanager


def query(host, expr: str) -> list[dict]:
    url = f"{PROMETHEUS}/api/v1/query?query={quote(expr)}"
    result = json.loads(host.check_output(f"curl -sf '{url}'"))
    assert result["status"] == "success", result
    return result["data"]["result"]


def by_feature(host, expr: str) -> dict[str, float]:
    return {s["metric"].get("feature", ""): float(s["value"][1]) for s in query(host, expr)}


def firing(host) -> set[tuple[str, str]]:
    """(alert, feature) of the drift alerts firing in Prometheus."""
    return {(s["metric"]["alertname"], s["metric"].get("feature", "")) for s in query(host, FIRING)}


def in_alertmanager(host) -> set[tuple[str, str]]:
    alerts = json.loads(host.check_output(f"curl -sf '{ALERTMANAGER}/api/v2/alerts?active=true'"))
    return {(a["labels"]["alertname"], a["labels"].get("feature", "")) for a in alerts}


class LiveTraffic:
    """Rows drawn from the training distribution (x1 optionally shifted), sent in a thread."""

    def __init__(
        self,
        means: dict[str, float],
        stddevs: dict[str, float],
        route: str = "/predict",
        shift_sigmas: float = 0.0,
    ) -> None:
        self.means, self.stddevs, self.route = means, stddevs, route
        self.shift_sigmas = shift_sigmas
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(11)

    def row(self) -> list[float]:
        x1 = self._rng.gauss(self.means["x1"], self.stddevs["x1"])
        x2 = self._rng.gauss(self.means["x2"], self.stddevs["x2"])
        return [x1 + self.shift_sigmas * self.stddevs["x1"], x2]

    def _run(self) -> None:
        with requests.Session() as session:
            next_send = time.monotonic()
            while not self._stop.is_set():
                row = {"data": self.row()}
                answer = session.post(f"{BASE_URL}{self.route}", json=row, timeout=10)
                self.statuses[answer.status_code] += 1
                next_send += 1 / RATE_PER_SECOND
                time.sleep(max(0.0, next_send - time.monotonic()))

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def training(host) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation of each feature, as the drift consumer counted them."""
    deadline = time.monotonic() + 120
    while True:
        counts = by_feature(host, "drift_training_count")
        if counts and min(counts.values()) >= 200:
            break
        assert time.monotonic() < deadline, f"too little training data counted: {counts}"
        time.sleep(5)
    return by_feature(host, "drift_training_mean"), by_feature(host, "drift_training_stddev")


def test_training_like_traffic_raises_no_drift_alert_and_a_shift_fires_within_3_minutes(
    host, training: tuple[dict[str, float], dict[str, float]]
) -> None:
    """Drift judges production only: meanwhile the idle colour gets x1 shifted by 3 sd on
    /test/predict (a smoke or load test), which must not count."""
    means, stddevs = training
    print(f"training: means {means}, standard deviations {stddevs}")
    idle = LiveTraffic(means, stddevs, route="/test/predict", shift_sigmas=3.0)
    with LiveTraffic(means, stddevs) as traffic, idle:
        # The window first fills with training-like rows only (earlier tests sent the
        # same input over and over), then nothing may fire for the hold and more.
        time.sleep(WINDOW_SECONDS + 15)
        calm_until = time.monotonic() + HOLD_SECONDS + 15
        z_seen: list[float] = []
        while time.monotonic() < calm_until:
            assert not firing(host), f"drift alert on training-like traffic: {firing(host)}"
            z_seen += by_feature(host, "abs(feature:drift_mean_z_score:window)").values()
            time.sleep(5)
        psi = by_feature(host, "feature:drift_psi:window")
        assert z_seen, "no z-score computed from the live window"
        assert psi, "no PSI computed from the live window"
        print(f"no drift: largest |z| {max(z_seen):.2f}, PSI {psi}")

        idle.stop()
        traffic.shift_sigmas = 3.0
        shifted = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < 2 * len(DRIFT_ALERTS):
            elapsed = time.monotonic() - shifted
            assert elapsed < FIRING_DEADLINE_SECONDS, f"after {elapsed:.0f} s only {seen}"
            for alert, feature in firing(host):
                seen.setdefault(f"{alert} firing", elapsed)
                assert feature == "x1", f"{alert} fired for {feature}, which did not move"
            for alert, feature in in_alertmanager(host):
                if alert in DRIFT_ALERTS and feature == "x1":
                    seen.setdefault(f"{alert} in Alertmanager", elapsed)
            time.sleep(2)
    for what, elapsed in sorted(seen.items(), key=lambda item: item[1]):
        print(f"x1 moved by 3 sd: {what} after {elapsed:.0f} s")
    print(f"live requests: {dict(traffic.statuses)}, on /test/predict: {dict(idle.statuses)}")
    assert set(traffic.statuses) == {200}
    assert set(idle.statuses) == {200}
