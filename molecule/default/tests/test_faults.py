"""Faults, bounded and against 127.0.0.1 only: the stack heals and never answers 5xx."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from conftest import (
    BASE_URL,
    COLOURS,
    REFERENCE_INPUT,
    REPO,
    active_colour,
    colour_container,
    colour_server,
    colour_socket,
    idle_colour,
    management,
    predict,
    run_playbook,
    torchserve_key,
)
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

UPSTREAMS = "/opt/modelserve/nginx/conf.d/upstreams.conf"
FUZZ_REQUESTS = 1500
HOSTILE_SECONDS = 15
VALID_CONNECTIONS = 30


def worker_pids(host, colour: str) -> list[int]:
    workers = management(host, colour, "/models/model")[0]["workers"]
    return sorted(w["pid"] for w in workers if w["status"] == "READY")


def container_state(host, name: str) -> dict:
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


def frontend_pid(host, container: str) -> int:
    """PID, inside the VM, of the TorchServe Java frontend of a container."""
    for pid in host.check_output("pgrep -f org.pytorch.serve.ModelServer").split():
        if container_name_of(host, int(pid)) == container:
            return int(pid)
    raise AssertionError(f"no TorchServe frontend in {container}")


def container_name_of(host, pid: int) -> str:
    cgroup = host.file(f"/proc/{pid}/cgroup").content_string
    for name in map(colour_container, COLOURS):
        if container_state(host, name)["Id"] in cgroup:
            return name
    return ""


@pytest.mark.parametrize("victim", ["container", "java-frontend"])
def test_crashed_production_server_comes_back_within_60s(host, victim: str) -> None:
    # A crash, not `docker kill`: Docker treats a kill through its API as a manual
    # stop and its restart policy leaves the container down on purpose.
    container = colour_container(active_colour(host))
    before = container_state(host, container)
    pid = before["State"]["Pid"] if victim == "container" else frontend_pid(host, container)
    assert host.run(f"kill -9 {pid}").rc == 0
    killed = time.monotonic()
    while time.monotonic() - killed < 120:
        try:
            if predict("/predict").status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    recovered = time.monotonic() - killed
    print(f"{container}: {victim} killed, /predict answered again after {recovered:.1f} s")
    assert container_state(host, container)["RestartCount"] == before["RestartCount"] + 1
    assert recovered <= 60


def timed_predictions(count: int) -> list[tuple[int, float]]:
    """Status and seconds of `count` requests to /predict, one after the other."""
    results = []
    for _ in range(count):
        started = time.monotonic()
        status = predict("/predict", timeout=30).status_code
        results.append((status, time.monotonic() - started))
    return results


def test_killed_worker_is_replaced_and_requests_succeed(host) -> None:
    colour = active_colour(host)
    before = worker_pids(host, colour)
    assert before
    with ThreadPoolExecutor(max_workers=1) as pool:
        traffic = pool.submit(timed_predictions, 200)
        time.sleep(0.2)
        # The image has no kill binary; the shell's builtin does.
        assert (
            host.run(f"docker exec {colour_container(colour)} sh -c 'kill -9 {before[0]}'").rc == 0
        )
        results = traffic.result()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(worker_pids(host, colour)) < len(before):
        time.sleep(1)
    after = worker_pids(host, colour)
    statuses = Counter(status for status, _ in results)
    slowest = max(seconds for _, seconds in results)
    print(
        f"worker {before[0]} killed under traffic: replaced by {after}; {dict(statuses)}, "
        f"slowest request {slowest:.2f} s"
    )
    assert after and before[0] not in after and len(after) == len(before)
    assert statuses == {200: 200}


def test_swap_to_a_config_that_does_not_validate_is_refused(host) -> None:
    production = active_colour(host)
    target = idle_colour(production)
    before = host.file(UPSTREAMS).content_string
    servers = {colour: colour_server(colour) for colour in COLOURS}
    broken = {"nginx_colour_servers": {**servers, target: "no-such-host:8080"}}
    result = run_playbook("swap.yml", "-e", f"target={target}", "-e", json.dumps(broken))
    assert result.returncode != 0
    assert "failed to validate" in result.output
    assert "no-such-host" in result.output
    assert host.file(UPSTREAMS).content_string == before
    response = predict("/predict")
    assert response.status_code == 200 and response.headers["X-Model-Colour"] == production


def fuzz_case(rng: random.Random) -> tuple[str, str, dict[str, str], bytes]:
    """One odd request: method, route, headers and body."""
    route = rng.choice(["/predict", "/test/predict", "/predict/", "/PREDICT", "/predict?x=1"])
    method = rng.choices(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"], [8, 1, 1, 1, 1, 1])[
        0
    ]
    scalars: list[object] = [0, -1.5, 1e308, -1e308, 10**40, True, None, "1", "", [], {}, 0.2]
    shape = rng.randrange(9)
    if shape == 0:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
    elif shape == 1:
        body = b"x" * rng.choice([17_000, 100_000, 1_000_000])
    elif shape == 2:
        body = json.dumps({"data": [rng.choice(scalars) for _ in range(rng.randrange(5))]}).encode()
    elif shape == 3:
        body = json.dumps(rng.choice(scalars)).encode()
    elif shape == 4:
        body = b'{"data": [' + rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]) + b", 1]}"
    elif shape == 5:
        body = b'{"data": ' + b"[" * 500 + b"]" * 500 + b"}"
    elif shape == 6:
        body = json.dumps({"data": REFERENCE_INPUT, "extra": "x" * rng.randrange(100)}).encode()
    elif shape == 7:
        body = '{"data": [0.2, "\u00e9\u4e2d"]}'.encode("utf-16")
    else:
        body = json.dumps({"data": REFERENCE_INPUT})[: rng.randrange(1, 20)].encode()
    headers = rng.choice(
        [
            {},
            {"Content-Type": "application/json"},
            {"Content-Type": "application/x-www-form-urlencoded"},
            {"Content-Type": "multipart/form-data; boundary=x"},
            {"Content-Type": "text/plain; charset=latin1"},
            {"Content-Encoding": "gzip"},
            {"Transfer-Encoding": "chunked"},
            {"X-Forwarded-For": "1.2.3.4, " * 50},
            {"Accept": "text/html"},
        ]
    )
    return method, route, headers, body


class ApiContract:
    """files/openapi.yaml: which status and body each request may get."""

    def __init__(self, path: Path) -> None:
        self.spec = yaml.safe_load(path.read_text())
        resource = Resource.from_contents(self.spec, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:modelserve-api", resource)

    def _resolve(self, node: dict) -> dict:
        while "$ref" in node:
            node = self.registry.resolver().lookup(f"urn:modelserve-api{node['$ref']}").contents
        return node

    def violation(self, method: str, url: str, status: int, body: str) -> str | None:
        """Why this answer breaks the contract, or None."""
        path = urlsplit(url).path
        operation = self.spec["paths"].get(path, {}).get(method.lower())
        if operation is None:
            # Unknown path: 404; known path, other method: 405; a body over the limit
            # gets 413 whatever it was sent to (see the description's info).
            allowed = {404 if path not in self.spec["paths"] else 405, 413}
            documented = {"$ref": "#/components/responses/Error"} if status in allowed else None
        else:
            documented = operation["responses"].get(str(status))
        if documented is None:
            return f"status {status} is not documented for {method} {path}"
        schema = self._resolve(documented)["content"]["application/json"]["schema"]
        try:
            document = json.loads(body)
        except ValueError:
            return f"body is not JSON: {body[:200]!r}"
        if "$ref" in schema:
            schema = {"$ref": f"urn:modelserve-api{schema['$ref']}"}
        validator = Draft202012Validator(schema, registry=self.registry)
        errors = [error.message for error in validator.iter_errors(document)]
        return f"body {document} does not match: {errors}" if errors else None


def test_fuzzed_requests_get_documented_answers_and_no_worker_dies(host) -> None:
    contract = ApiContract(REPO / "files/openapi.yaml")
    rng = random.Random(20261125)
    pids = {colour: worker_pids(host, colour) for colour in COLOURS}
    by_status: Counter[int] = Counter()
    with requests.Session() as session:
        for _ in range(FUZZ_REQUESTS):
            method, route, headers, body = fuzz_case(rng)
            if headers.get("Transfer-Encoding") == "chunked":
                headers = {}
                data: object = iter([body])
            else:
                data = body
            response = session.request(
                method, f"{BASE_URL}{route}", data=data, headers=headers, timeout=15
            )
            by_status[response.status_code] += 1
            request = (method, route, headers, body[:200])
            assert response.status_code < 500, (request, response.text)
            violation = contract.violation(method, route, response.status_code, response.text)
            assert violation is None, (request, violation)
    print(
        f"fuzz: {by_status.total()} requests, answers by status {dict(sorted(by_status.items()))}"
    )
    assert {colour: worker_pids(host, colour) for colour in COLOURS} == pids
    assert predict("/predict").status_code == 200


def client_headers(rng: random.Random, lines: int, line_bytes: tuple[int, int]) -> dict[str, str]:
    """``lines`` headers of a client's own (cookies, tracing, a proxy chain), each line of a
    length drawn from ``line_bytes``."""
    headers = {}
    for i in range(lines):
        name = f"X-Client-{i}-" + "".join(rng.choices("abcdefghij", k=rng.randrange(1, 20)))
        size = rng.randint(*line_bytes) - len(name) - 2
        headers[name] = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=;", k=size))
    return headers


def test_a_clients_own_headers_never_reach_torchserve(host) -> None:
    """TorchServe refuses a request with more than 8 KB of headers; nginx takes a header
    line up to 8 KB (4 buffers in all) and forwards none of a client's own: whatever their
    size, a valid body is answered by the model, and a line beyond nginx's buffers, or a
    URI, gets nginx's own JSON error."""
    rng = random.Random(time.time_ns())
    colour = active_colour(host)
    # What nginx used to hand on: straight to the colour's socket, with its key.
    padded = " ".join(f"-H 'X-Pad-{i}: {'a' * 4000}'" for i in range(3))
    key = torchserve_key(host, colour, "inference")
    direct = host.run(
        f"curl -s -w ' %{{http_code}}' --unix-socket {colour_socket(colour)} {padded} "
        f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f"-d '{json.dumps({'data': REFERENCE_INPUT})}' http://localhost/predictions/model"
    )
    assert direct.stdout.endswith(" 400") and "Invalid HTTP message" in direct.stdout
    over_torchserve = 0
    with requests.Session() as session:
        for i in range(30):
            # Half of them over TorchServe's 8 KB by construction.
            lines, sizes = (rng.randint(2, 3), (4300, 7000)) if i % 2 else (1, (100, 7000))
            headers = client_headers(rng, lines, sizes)
            over_torchserve += sum(len(k) + len(v) + 4 for k, v in headers.items()) > 8192
            response = session.post(
                f"{BASE_URL}/predict", json={"data": REFERENCE_INPUT}, headers=headers, timeout=15
            )
            assert response.status_code == 200, (response.status_code, response.text[:300])
            assert "output" in response.json()
        for _ in range(5):
            headers = client_headers(rng, rng.randint(1, 3), (8300, 16000))
            response = session.post(
                f"{BASE_URL}/predict", json={"data": REFERENCE_INPUT}, headers=headers, timeout=15
            )
            assert response.status_code == 400
            assert response.json() == {"error": "request headers too large"}
        response = session.post(
            f"{BASE_URL}/predict?{'q' * rng.randint(8300, 16000)}", json={"data": REFERENCE_INPUT}
        )
        assert response.status_code == 414 and response.json() == {"error": "request URI too long"}
    print(f"30 requests with a client's headers, {over_torchserve} over TorchServe's 8 KB")
    assert predict("/predict").status_code == 200


def hostile_body(rng: random.Random) -> bytes:
    """A body under nginx's 16 KiB limit that no client should send: deep nesting, an
    integer beyond Python's 4,300 digits, an exponent beyond float64, invalid UTF-8, or
    random bytes."""
    kind = rng.randrange(5)
    if kind == 0:
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('[{"data":', "}]")])
        depth = rng.randrange(1000, 15_000 // (len(opener) + len(closer)))
        return f'{{"data": {opener * depth}1{closer * depth}}}'.encode()
    if kind == 1:
        digits = rng.choice("123456789") + "".join(rng.choices("0123456789", k=12_000))
        number = rng.choice(["", "-"]) + digits[: rng.randrange(4301, len(digits) + 1)]
        rest = rng.choice(["", ".5", "e3"])
        return f'{{"data": [{number}{rest}, 0.6]}}'.encode()
    if kind == 2:
        return f'{{"data": [1e{rng.randrange(400, 10**6)}, 0.6]}}'.encode()
    if kind == 3:
        junk = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 8)))
        return b'{"data": [0.2, "' + junk + b'"]}'
    return rng.randbytes(rng.randrange(1, 4096))


def send_hostile(until: float, seed: int, answers: Counter[str]) -> None:
    """One client sending hostile bodies, as fast as it can, on one kept-alive connection."""
    rng = random.Random(seed)
    with requests.Session() as session:
        while time.monotonic() < until:
            response = session.post(
                f"{BASE_URL}/predict",
                data=hostile_body(rng),
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            try:
                own_error = "error" in response.json()
            except ValueError:
                own_error = False
            answers[f"{response.status_code}{'' if own_error else ' not JSON'}"] += 1


def test_hostile_bodies_under_load_fail_no_valid_request(host) -> None:
    """30 kept-alive connections send the reference input to /predict (wrk) while one
    client sends hostile bodies as fast as it can, for 15 s: each hostile body gets its
    own 4xx JSON error, no valid request fails, no worker dies."""
    colour = active_colour(host)
    pids = worker_pids(host, colour)
    seed = time.time_ns()
    answers: Counter[str] = Counter()
    wrk = subprocess.Popen(
        ["wrk", "-t", "2", "-c", str(VALID_CONNECTIONS), "-d", f"{HOSTILE_SECONDS}s",
         "--timeout", "5s", "-s", str(REPO / "benchmarks/post.lua"), f"{BASE_URL}/predict"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        hostile = threading.Thread(
            target=send_hostile, args=(time.monotonic() + HOSTILE_SECONDS, seed, answers)
        )
        hostile.start()
        hostile.join(timeout=HOSTILE_SECONDS + 30)
    finally:
        output, _ = wrk.communicate(timeout=HOSTILE_SECONDS + 30)
    line = next(row for row in output.splitlines() if row.startswith("BENCH_RESULT "))
    valid = json.loads(line.removeprefix("BENCH_RESULT "))
    failed = sum(valid[key] for key in valid if key.startswith("errors_"))
    print(
        f"under load: {valid['requests']} valid requests, {failed} failed "
        f"({ {k: v for k, v in valid.items() if k.startswith('errors_')} }); "
        f"hostile bodies (seed {seed}): {answers.total()}, answers {dict(answers)}"
    )
    assert wrk.returncode == 0, output
    assert valid["requests"] > 1000
    assert answers.total() > 50
    assert failed == 0, f"{failed} of {valid['requests']} valid requests failed"
    assert all(answer.startswith("4") and answer[3:] == "" for answer in answers), answers
    assert worker_pids(host, colour) == pids
