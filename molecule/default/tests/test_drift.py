"""The kafka_drift role: broker, consumer metrics in Prometheus, exactly-once counting.

Bounded runs of the producer (a known number of messages, in a throwaway container on the
stack network) are compared with what the consumer counted, across a consumer restart
and a 30 s broker outage. The simulator is stopped meanwhile so that every message
counted in a run is one of the run's. Traffic stays inside the VM.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from conftest import run_ansible

PROMETHEUS = "http://127.0.0.1:9090"
NETWORK = "modelserve"
BROKER = "kafka"
CONSUMER = "drift-consumer"
SIMULATOR = "drift-producer"
BOUNDED = "drift-test-producer"
METRICS_URL = "http://127.0.0.1:8000/metrics"
SAMPLE = re.compile(r'^(drift_training_\w+?)(?:\{reason="(\w+)"\})? (\S+)$', re.M)


def api(host, url: str) -> dict:
    return json.loads(host.check_output(f"curl -sf '{url}'"))


def counted(host) -> tuple[int, Counter[str]]:
    """Valid rows and invalid messages per reason, read from the consumer itself."""
    script = f"import urllib.request as u; print(u.urlopen('{METRICS_URL}').read().decode())"
    deadline = time.monotonic() + 60
    while True:  # the consumer may be restarting
        result = host.run(f"docker exec {CONSUMER} python -c {json.dumps(script)}")
        if result.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.rc == 0, result.stderr
    valid, invalid = 0, Counter()
    for name, reason, value in SAMPLE.findall(result.stdout):
        if name == "drift_training_messages_total":
            valid = int(float(value))
        elif name == "drift_training_invalid_messages_total":
            invalid[reason] = int(float(value))
    return valid, invalid


def total(host) -> int:
    valid, invalid = counted(host)
    return valid + sum(invalid.values())


def wait_until_settled(host, quiet_s: float = 8, timeout: float = 120) -> tuple[int, Counter]:
    """The consumer's counts once they stop moving (it has read everything there is)."""
    deadline = time.monotonic() + timeout
    last, since = counted(host), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(2)
        now = counted(host)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    pytest.fail(f"consumer counts still moving after {timeout:.0f} s")


def drift_image(host) -> str:
    return host.check_output(f"docker inspect -f '{{{{.Config.Image}}}}' {CONSUMER}")


def start_bounded_producer(host, messages: int, rate: float, invalid_share: float, seed: int):
    """A producer run that stops by itself after ``messages`` sends."""
    host.run(f"docker rm -f {BOUNDED}")
    env = {
        "DRIFT_BOOTSTRAP_SERVERS": f"{BROKER}:9092",
        "DRIFT_MAX_MESSAGES": messages,
        "DRIFT_RATE": rate,
        "DRIFT_INVALID_SHARE": invalid_share,
        "DRIFT_SEED": seed,
        "DRIFT_PRODUCER_METRICS_PORT": 0,
    }
    flags = " ".join(f"-e {k}={v}" for k, v in env.items())
    host.check_output(
        f"docker run -d --name {BOUNDED} --network {NETWORK} {flags} {drift_image(host)}"
        " python -m modelserve.drift.producer"
    )


def bounded_producer_summary(host, timeout: float) -> dict:
    """Wait for the bounded run to end; its JSON summary (what the broker acknowledged)."""
    result = host.run(f"timeout {timeout:.0f} docker wait {BOUNDED}")
    assert result.rc == 0, f"producer still running after {timeout:.0f} s"
    stdout = host.run(f"docker logs {BOUNDED} 2>/dev/null").stdout
    logs = host.run(f"docker logs {BOUNDED} 2>&1 >/dev/null").stdout
    host.run(f"docker rm -f {BOUNDED}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no summary from the producer:\n{logs[-2000:]}"
    return json.loads(lines[-1])


def compare(label: str, before: tuple[int, Counter], after: tuple[int, Counter], produced: dict):
    counted_valid = after[0] - before[0]
    counted_invalid = after[1] - before[1]
    print(
        f"{label}: produced valid={produced['valid']} invalid={produced['invalid']}"
        f" failed={produced['failed']}; counted valid={counted_valid}"
        f" invalid={sum(counted_invalid.values())}; by reason produced"
        f" {produced['invalid_by_reason']} counted {dict(counted_invalid)}"
    )
    assert produced["failed"] == 0, "sends the broker never acknowledged: no exact count"
    assert counted_valid == produced["valid"]
    assert dict(counted_invalid) == produced["invalid_by_reason"]


@pytest.fixture
def quiet_topic(host) -> Iterator[None]:
    """The simulator stopped for the test, started again afterwards."""
    assert host.run(f"docker stop {SIMULATOR}").rc == 0
    try:
        yield
    finally:
        host.run(f"docker unpause {BROKER}")
        host.run(f"docker rm -f {BOUNDED}")
        host.run(f"docker start {SIMULATOR}")


def test_converge_removes_drift_images_of_earlier_code(host) -> None:
    """A tag of earlier code goes; the running one stays (the role's prune tasks, run
    through Ansible as a converge runs them)."""
    current = drift_image(host)
    stale = f"{current.rsplit(':', 1)[0]}:000000000000"
    host.check_output(f"docker tag {current} {stale}")
    result = run_ansible(
        "ansible", "modelserve", "-b", "-m", "ansible.builtin.include_role",
        "-a", "name=kafka_drift tasks_from=prune", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.output
    tags = host.check_output(f"docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {stale}")
    assert tags == "", f"{stale} still there"
    assert host.run(f"docker image inspect {current}").rc == 0


def test_drift_scrape_target_is_up(host) -> None:
    deadline = time.monotonic() + 90
    while True:
        targets = api(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        drift = [t for t in targets if t["labels"]["job"] == "drift"]
        if (drift and drift[0]["health"] == "up") or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert [t["health"] for t in drift] == ["up"], drift


def test_consumer_metrics_are_not_published(host) -> None:
    assert host.check_output(f"docker port {CONSUMER}") == ""
    # The broker has no authentication: it is not published, not even on loopback.
    assert host.check_output(f"docker port {BROKER}") == ""


def test_training_messages_grow_with_invalid_ones_counted(host) -> None:
    first_valid, first_invalid = counted(host)
    time.sleep(10)
    valid, invalid = counted(host)
    print(f"in 10 s: valid {first_valid} -> {valid}, invalid {first_invalid} -> {invalid}")
    assert valid > first_valid
    # The simulator sends 5 % malformed messages (test bed's group_vars).
    assert sum(invalid.values()) > 0
    expr = quote("increase(drift_training_messages_total[1m])")
    deadline = time.monotonic() + 60
    while True:  # Prometheus sees the growth too
        result = api(host, f"{PROMETHEUS}/api/v1/query?query={expr}")["data"]["result"]
        if (result and float(result[0]["value"][1]) > 0) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert result and float(result[0]["value"][1]) > 0, result


@pytest.mark.parametrize("how", ["docker restart", "SIGKILL"])
@pytest.mark.usefixtures("quiet_topic")
def test_consumer_restarted_mid_stream_counts_each_message_once(host, how: str) -> None:
    before = wait_until_settled(host)
    start_bounded_producer(host, messages=600, rate=40, invalid_share=0.1, seed=7)
    baseline = before[0] + sum(before[1].values())
    deadline = time.monotonic() + 60
    while (so_far := total(host) - baseline) < 150:
        assert time.monotonic() < deadline, "the consumer counts nothing of the run"
        time.sleep(0.5)
    print(f"consumer {how} after {so_far} of the run's 600 messages were counted")
    if how == "SIGKILL":  # a crash: the restart policy brings it back
        pid = host.check_output(f"docker inspect -f '{{{{.State.Pid}}}}' {CONSUMER}")
        assert host.run(f"kill -9 {pid}").rc == 0
    else:
        assert host.run(f"docker restart {CONSUMER}").rc == 0
    produced = bounded_producer_summary(host, timeout=120)
    after = wait_until_settled(host)
    compare(f"consumer {how} mid-stream", before, after, produced)


@pytest.mark.usefixtures("quiet_topic")
def test_broker_outage_of_30s_loses_no_message(host) -> None:
    """The broker frozen (docker pause) for 30 s while a bounded producer runs.

    Not `docker stop`: the Kafka stand-in (Tansu) keeps its data in memory only, so a stop
    would lose the topic; the real image keeps it on the kafka-data volume.
    """
    before = wait_until_settled(host)
    start_bounded_producer(host, messages=1000, rate=20, invalid_share=0.05, seed=11)
    time.sleep(10)
    assert host.run(f"docker pause {BROKER}").rc == 0
    paused = time.monotonic()
    time.sleep(30)
    assert host.run(f"docker unpause {BROKER}").rc == 0
    print(f"broker paused for {time.monotonic() - paused:.1f} s")
    produced = bounded_producer_summary(host, timeout=240)
    after = wait_until_settled(host, timeout=180)
    compare("broker down 30 s", before, after, produced)
