"""The route_metrics role: nginx's requests per route and colour in Prometheus, counted by
mtail from the access logs, across a log rotation."""

from __future__ import annotations

import json
import random
import time
from urllib.parse import quote

import requests
from conftest import BASE_URL, REFERENCE_INPUT, active_colour, idle_colour

PROMETHEUS = "http://127.0.0.1:9090"
LOG_DIR = "/var/log/modelserve-nginx"
SCRAPE_WAIT_S = 60
# Time mtail is given to read a logged line (it looks every 250 ms).
READ_MARGIN_S = 2
ROTATE = (
    "/usr/sbin/logrotate --force --state /var/lib/logrotate/modelserve-nginx.status "
    "/etc/logrotate.d/modelserve-nginx"
)
ROUTES = {"production": "/predict", "test": "/test/predict"}


def value(host, expr: str) -> float:
    """The value of a PromQL expression summed to one number (0 when no series matches),
    asked of Prometheus inside the VM."""
    url = f"{PROMETHEUS}/api/v1/query?query={quote(f'sum({expr}) or vector(0)')}"
    result = json.loads(host.check_output(f"curl -sf '{url}'"))
    assert result["status"] == "success", result
    return float(result["data"]["result"][0]["value"][1])


def requests_total(route: str, status: int, colour: str | None = None) -> str:
    colour_match = "" if colour is None else f',colour="{colour}"'
    return f'modelserve_route_requests_total{{route="{route}",status="{status}"{colour_match}}}'


def upstream_count(route: str, colour: str) -> str:
    return f'modelserve_route_upstream_seconds_count{{route="{route}",colour="{colour}"}}'


UNPARSED = "modelserve_route_log_lines_unparsed_total"


def last_scrape(host) -> float:
    return value(host, 'timestamp(up{job="route_metrics"})')


def scraped_after(host, moment: float) -> float:
    """Wait until Prometheus has scraped mtail after ``moment`` (the VM shares this
    machine's clock); the scrape's time."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while (scraped := last_scrape(host)) <= moment:
        assert time.monotonic() < deadline, "Prometheus has not scraped mtail lately"
        time.sleep(1)
    return scraped


def snapshot(host, exprs: list[str]) -> dict[str, float]:
    """The expressions' values once everything logged so far is in Prometheus (earlier
    tests' traffic included): from a scrape READ_MARGIN_S after now, and the same at the
    next scrape (mtail had read all there was)."""
    scraped = scraped_after(host, time.time() + READ_MARGIN_S)
    values = {expr: value(host, expr) for expr in exprs}
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while True:
        scraped = scraped_after(host, scraped)
        again = {expr: value(host, expr) for expr in exprs}
        if again == values:
            return values
        assert time.monotonic() < deadline, f"still counting: {values} then {again}"
        values = again


def increase_since(host, before: dict[str, float]) -> dict[str, float]:
    """Each expression's increase over ``before``, once the requests sent so far are in
    Prometheus."""
    after = snapshot(host, list(before))
    return {expr: after[expr] - before[expr] for expr in before}


def post(session: requests.Session, route: str, count: int) -> None:
    for _ in range(count):
        answer = session.post(f"{BASE_URL}{route}", json={"data": REFERENCE_INPUT}, timeout=10)
        assert answer.status_code == 200, answer.text


def test_mtail_is_scraped_and_not_published(host) -> None:
    deadline = time.monotonic() + 60
    while value(host, 'up{job="route_metrics"}') != 1 and time.monotonic() < deadline:
        time.sleep(3)
    assert value(host, 'up{job="route_metrics"}') == 1
    assert host.check_output("docker port route-metrics") == ""


def test_requests_are_counted_per_route_colour_and_status(host) -> None:
    production = active_colour(host)
    idle = idle_colour(production)
    # Different counts per route and kind: a request counted under the wrong label
    # cannot give the right totals.
    rng = random.Random()
    n_production, n_test = rng.sample(range(3, 16), 2)
    n_refused = rng.randint(1, 3)
    print(f"{n_production} to /predict ({production}), {n_test} to /test/predict ({idle}), "
          f"{n_refused} GET refused")  # fmt: skip
    exprs = {
        "production": requests_total("production", 200, production),
        "test": requests_total("test", 200, idle),
        "refused": requests_total("production", 405),
        "production_upstream": upstream_count("production", production),
        "test_upstream": upstream_count("test", idle),
        "unparsed": UNPARSED,
    }
    before = snapshot(host, list(exprs.values()))
    with requests.Session() as session:
        post(session, ROUTES["production"], n_production)
        post(session, ROUTES["test"], n_test)
        for _ in range(n_refused):
            assert session.get(f"{BASE_URL}{ROUTES['production']}", timeout=10).status_code == 405
    expected = {
        exprs["production"]: n_production,
        exprs["test"]: n_test,
        exprs["refused"]: n_refused,
        # Answered by nginx itself, the 405s have no upstream time.
        exprs["production_upstream"]: n_production,
        exprs["test_upstream"]: n_test,
    }
    increase = increase_since(host, before)
    assert {e: increase[e] for e in expected} == expected
    assert increase[UNPARSED] == 0


def test_requests_are_still_counted_after_a_rotation(host) -> None:
    """Requests before a forced rotation and after it (in the new file, created 0640 in
    the group adm, which mtail reads as a member of it) are all counted."""
    production = active_colour(host)
    rng = random.Random()
    before_rotation, after_rotation = rng.randint(1, 8), rng.randint(3, 15)
    counter = requests_total("production", 200, production)
    log = f"{LOG_DIR}/production.access.log"
    before = snapshot(host, [counter])
    with requests.Session() as session:
        post(session, ROUTES["production"], before_rotation)
        inode = host.check_output(f"stat -c %i {log}")
        assert host.run(ROTATE).rc == 0
        assert host.check_output(f"stat -c %i {log}") != inode, "the log was not rotated"
        # nginx writes to the new file once it has reopened its logs (signalled by logrotate).
        time.sleep(2)
        post(session, ROUTES["production"], after_rotation)
    increase = increase_since(host, before)
    assert increase[counter] == before_rotation + after_rotation
    assert (host.file(log).mode, host.file(log).group) == (0o640, "adm")
