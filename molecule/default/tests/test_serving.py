"""The serving core: /predict and /test/predict, colours, swap.yml, bad input."""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import (
    BASE_URL,
    COLOURS,
    CONTRACT,
    FACT_FILE,
    REFERENCE_INPUT,
    PredictLoad,
    active_colour,
    colour_port,
    idle_colour,
    predict,
    put_in_production,
    run_playbook,
    torchserve_key,
)

TOLERANCE = 1e-6
# Set by nginx's reload handlers while client connections drain (roles/nginx).
DRAIN_FLAG = "/opt/modelserve/nginx/state/drain"
# Production after the first converge, and the colour a swap without target goes to.
INITIAL: str = CONTRACT["bluegreen_initial_colour"]
OTHER = idle_colour(INITIAL)


@pytest.fixture
def initial_is_production(host):
    """Start, and leave the VM, with the initial colour in production, as the converge left it."""
    put_in_production(host, INITIAL)
    yield
    put_in_production(host, INITIAL)


@pytest.mark.parametrize("route", ["/predict", "/test/predict"])
def test_routes_answer_the_reference_input(route: str, reference_output: float) -> None:
    response = predict(route)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert abs(response.json()["output"] - reference_output) <= TOLERANCE


def test_colour_header_names_active_and_idle_colour(host) -> None:
    active = active_colour(host)
    assert active == INITIAL
    assert predict("/predict").headers["X-Model-Colour"] == active
    assert predict("/test/predict").headers["X-Model-Colour"] == idle_colour(active)


@pytest.mark.usefixtures("initial_is_production")
def test_swap_to_the_idle_colour_and_back(host) -> None:
    to_other = run_playbook("swap.yml", "-e", f"target={OTHER}")
    assert to_other.returncode == 0, to_other.output
    assert to_other.changed > 0
    assert active_colour(host) == OTHER
    assert predict("/predict").headers["X-Model-Colour"] == OTHER
    assert predict("/test/predict").headers["X-Model-Colour"] == idle_colour(OTHER)
    # The reload's drain is over: connections are kept alive again.
    assert not host.file(DRAIN_FLAG).exists
    assert predict("/predict").headers["Connection"] == "keep-alive"

    again = run_playbook("swap.yml", "-e", f"target={OTHER}")
    assert again.returncode == 0, again.output
    assert again.changed == 0, again.output

    back = run_playbook("swap.yml", "-e", f"target={INITIAL}")
    assert back.returncode == 0, back.output
    assert predict("/predict").headers["X-Model-Colour"] == INITIAL


@pytest.mark.usefixtures("initial_is_production")
def test_swap_without_target_flips(host) -> None:
    flip = run_playbook("swap.yml")
    assert flip.returncode == 0, flip.output
    assert active_colour(host) == OTHER
    assert predict("/predict").headers["X-Model-Colour"] == OTHER


@pytest.mark.usefixtures("initial_is_production")
@pytest.mark.parametrize("target", ["purple", f"{OTHER}; rm -rf /", "1"])
def test_bad_target_fails_clearly_and_changes_nothing(host, target: str) -> None:
    upstreams = "/opt/modelserve/nginx/conf.d/upstreams.conf"
    before = (host.file(upstreams).content_string, host.file(FACT_FILE).content_string)
    result = run_playbook("swap.yml", "-e", f"target={target}")
    assert result.returncode != 0
    assert f"target must be one of {', '.join(COLOURS)}" in result.output
    after = (host.file(upstreams).content_string, host.file(FACT_FILE).content_string)
    assert after == before
    assert predict("/predict").headers["X-Model-Colour"] == INITIAL


MALFORMED = {
    "not json": b"this is not json",
    "empty body": b"",
    "not an object": b"[0.2, 0.6]",
    "missing data": b'{"input": [0.2, 0.6]}',
    "too few values": b'{"data": [0.2]}',
    "too many values": b'{"data": [0.2, 0.6, 1.0]}',
    "strings": b'{"data": ["0.2", "0.6"]}',
    "nan": b'{"data": [NaN, 0.6]}',
    "infinity": b'{"data": [Infinity, 0.6]}',
    "nested list": b'{"data": [[0.2, 0.6]]}',
    "booleans": b'{"data": [true, false]}',
    "data not a list": b'{"data": 0.2}',
    "invalid utf-8": b'{"data": [0.2, "\xff"]}',
}


def worker_pids(host, colour: str) -> list[int]:
    port = colour_port(colour, "management")
    auth = f"Authorization: Bearer {torchserve_key(host, colour)}"
    models = json.loads(
        host.check_output(f"curl -sf -H '{auth}' http://127.0.0.1:{port}/models/model")
    )
    workers = models[0]["workers"]
    assert workers and all(w["status"] == "READY" for w in workers), workers
    return sorted(w["pid"] for w in workers)


@pytest.mark.parametrize("route", ["/predict", "/test/predict"])
def test_malformed_input_gets_4xx_json_and_workers_survive(host, route: str) -> None:
    pids_before = {colour: worker_pids(host, colour) for colour in COLOURS}
    for case, body in MALFORMED.items():
        response = requests.post(f"{BASE_URL}{route}", data=body, timeout=10)
        assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text}"
        assert "error" in response.json(), f"{case}: {response.text}"
    assert {colour: worker_pids(host, colour) for colour in COLOURS} == pids_before
    assert predict(route).status_code == 200


def test_nginx_errors_are_json() -> None:
    wrong_method = requests.get(f"{BASE_URL}/predict", timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]
    too_large = requests.post(f"{BASE_URL}/predict", data=b"x" * 100_000, timeout=10)
    assert too_large.status_code == 413
    assert too_large.json()["error"]
    unknown = requests.get(f"{BASE_URL}/nothing-here", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]


def test_access_logs_are_separate_per_route(host) -> None:
    marker = f"/predict?probe={time.time_ns()}"
    assert predict(marker).status_code == 200
    test_marker = f"/test/predict?probe={time.time_ns()}"
    assert predict(test_marker).status_code == 200
    production_log = host.file("/var/log/modelserve-nginx/production.access.log").content_string
    test_log = host.file("/var/log/modelserve-nginx/test.access.log").content_string
    assert marker in production_log and marker not in test_log
    assert test_marker in test_log and test_marker not in production_log
    entry = json.loads(next(line for line in production_log.splitlines() if marker in line))
    assert entry["status"] == 200 and entry["colour"] == INITIAL


# wrk's own time limit under the swap test: far above a swap's duration, it only stops a
# run whose swap hangs.
WRK_LIMIT_S = 300


def test_client_connections_are_kept_alive() -> None:
    """Three requests on one connection; nginx says how long it stays open."""
    url = urlsplit(BASE_URL)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    body = json.dumps({"data": REFERENCE_INPUT})
    local_ports, answers = set(), []
    try:
        for _ in range(3):
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Keep-Alive")))
            response.read()
            # http.client drops the socket when the answer says "Connection: close".
            assert connection.sock is not None, "nginx closed the connection"
            local_ports.add(connection.sock.getsockname()[1])
    finally:
        connection.close()
    assert answers == [(200, "timeout=4")] * 3
    assert len(local_ports) == 1


def slowest_tasks(playbook_output: str, count: int = 5) -> list[str]:
    """The slowest tasks of a run, from the profile_tasks callback's summary (ansible.cfg)."""
    timings = re.findall(r"^(\S.*?) -{3,} (\d+\.\d+)s$", playbook_output, re.M)
    timings.sort(key=lambda item: float(item[1]), reverse=True)
    return [f"{seconds:>7}s  {task}" for task, seconds in timings[:count]]


@pytest.mark.usefixtures("initial_is_production")
def test_no_request_fails_across_a_swap_under_load(tmp_path: Path) -> None:
    """50 kept-alive connections against /predict while swap.yml runs, from 5 s before
    the swap until 3 s after it. wrk's own limit (300 s) only bounds a hung swap: on a
    loaded 2-core machine a swap under load has taken over a minute."""
    with PredictLoad(tmp_path, connections=50, limit_s=WRK_LIMIT_S) as wrk:
        time.sleep(5)
        started = time.monotonic()
        swap = run_playbook("swap.yml", "-e", f"target={OTHER}")
        swap_s = time.monotonic() - started
        time.sleep(3)
    print(wrk.output)
    assert swap.returncode == 0, swap.output
    assert swap.changed > 0
    load = wrk.summary()
    print(
        f"swap under load: swap.yml took {swap_s:.1f} s; wrk: {load.requests} requests in"
        f" {load.duration_s:.1f} s, {load.non_2xx} non-2xx, socket errors"
        f" {load.socket_errors or 'none'}; slowest tasks of the swap:\n  "
        + "\n  ".join(slowest_tasks(swap.output))
    )
    assert load.requests > 1000
    assert load.failed == 0, wrk.output
    assert predict("/predict").headers["X-Model-Colour"] == OTHER


def test_status_playbook_reports_both_colours() -> None:
    status = run_playbook("status.yml")
    assert status.returncode == 0, status.output
    assert f"production: {INITIAL}" in status.output
    for colour in COLOURS:
        assert re.search(rf"{colour}: healthy, model model version 1\.0", status.output), (
            status.output
        )
