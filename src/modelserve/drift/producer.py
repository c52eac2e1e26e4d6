"""Training-data simulator: writes rows ``{"x1": .., "x2": ..}`` to the training topic.

Run: ``python -m modelserve.drift.producer [--create-topic | --only-create-topic]``
(with ``roles/kafka_drift/files`` on ``PYTHONPATH``).

Environment
===========
==============================  ===================  ==========================================
variable                        default              meaning
==============================  ===================  ==========================================
DRIFT_BOOTSTRAP_SERVERS         localhost:9092       comma-separated host:port of the brokers
DRIFT_TOPIC                     trainingdata         topic to write to
DRIFT_FEATURES                  x1,x2                feature names
DRIFT_MEANS                     0.5,0.5              mean of each feature's normal distribution
DRIFT_STDDEVS                   0.2,0.2              standard deviation of each feature
DRIFT_RATE                      10                   messages per second; 0 = as fast as possible
DRIFT_MAX_MESSAGES              0                    stop after this many sends (acknowledged or
                                                     failed); 0 = run until SIGTERM
DRIFT_INVALID_SHARE             0                    share (0..1) of malformed messages
DRIFT_SEED                      (random)             seed, for a reproducible stream
DRIFT_PRODUCER_METRICS_PORT     8001                 Prometheus endpoint port; 0 = none
DRIFT_METRICS_ADDR              0.0.0.0              address the endpoint listens on
DRIFT_PARTITIONS                1                    partitions, for --create-topic
DRIFT_REPLICATION_FACTOR        1                    replication factor, for --create-topic
DRIFT_LOG_LEVEL                 INFO                 our log level
DRIFT_KAFKA_LOG_LEVEL           WARNING              kafka-python's log level
==============================  ===================  ==========================================

``--create-topic`` creates the topic first (an existing topic is fine) and then produces;
``--only-create-topic`` creates it and exits. A broker that is not up yet is waited for
(retries with backoff up to 30 s, logged) until SIGTERM.

A message counts as produced once the broker acknowledged it (acks=all). Counts are
exported as ``drift_producer_messages_total{kind="valid"|"invalid"}`` and
``drift_producer_failed_total`` (sends the broker never acknowledged; the process then
exits 1), and printed at the end: one log line, and one JSON line on stdout, e.g.
``{"valid": 95, "invalid": 5, "failed": 0, "invalid_by_reason": {"not_json": 2, ...}}``
(the reasons are those the consumer will count them under), so a test can compare
produced with counted. A send reported failed (e.g. timed out) may still have been
written, so compare exactly only when ``failed`` is 0. When sends fail and none is
acknowledged for 60 s (STALL_EXIT_S), the run ends there (exit 1): a container's restart
policy then starts a fresh producer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .envconfig import (
    INT16_MAX,
    INT32_MAX,
    PORT_MAX,
    ConfigError,
    env_float,
    env_floats,
    env_int,
    env_list,
    env_str,
    setup_logging,
)

logger = logging.getLogger("drift.producer")
T = TypeVar("T")
# Longest wait between two attempts to reach the broker.
RETRY_MAX_S = 30.0
# Sends failing with no acknowledgement for this long: give up and exit 1, so that the
# restart policy starts a fresh producer. kafka-python keeps failing every send after
# a fatal error (e.g. a broker that forgot our idempotent producer id on restart).
STALL_EXIT_S = 60.0

# Malformed values and the consumer reason each one must be counted under (a unit test
# checks the consumer agrees). ``None`` is a tombstone (Kafka wants a key with it).
MALFORMED: tuple[tuple[bytes | None, str], ...] = (
    (None, "empty"),
    (b"", "empty"),
    (b"not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b'{"x1": 0.5, "x2": ', "not_json"),
    (b"[0.5, 0.5]", "not_object"),
    (b'"x1"', "not_object"),
    (b'{"x1": 0.5}', "missing_feature"),
    (b"{}", "missing_feature"),
    (b'{"x1": "0.5", "x2": 0.5}', "not_numeric"),
    (b'{"x1": true, "x2": 0.5}', "not_numeric"),
    (b'{"x1": null, "x2": 0.5}', "not_numeric"),
    (b'{"x1": NaN, "x2": 0.5}', "not_finite"),
    (b'{"x1": 0.5, "x2": Infinity}', "not_finite"),
    (b'{"x1": 1e999, "x2": 0.5}', "not_finite"),
)


@dataclass(frozen=True)
class ProducerConfig:
    """Settings of the simulator, from DRIFT_* variables (see module doc)."""

    bootstrap_servers: tuple[str, ...]
    topic: str
    features: tuple[str, ...]
    means: tuple[float, ...]
    stddevs: tuple[float, ...]
    rate: float
    max_messages: int
    invalid_share: float
    seed: int | None
    metrics_port: int
    metrics_addr: str
    partitions: int
    replication_factor: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProducerConfig:
        """Configuration from the environment; ConfigError names a bad variable."""
        features = env_list(env, "DRIFT_FEATURES", "x1,x2")
        stddevs = env_floats(env, "DRIFT_STDDEVS", "0.2,0.2", len(features))
        if not all(sd > 0 for sd in stddevs):
            raise ConfigError("DRIFT_STDDEVS must be positive")
        invalid_share = env_float(env, "DRIFT_INVALID_SHARE", 0.0, minimum=0.0)
        if invalid_share > 1:
            raise ConfigError("DRIFT_INVALID_SHARE must lie between 0 and 1")
        seed_text = env_str(env, "DRIFT_SEED", "")
        return cls(
            bootstrap_servers=env_list(env, "DRIFT_BOOTSTRAP_SERVERS", "localhost:9092"),
            topic=env_str(env, "DRIFT_TOPIC", "trainingdata"),
            features=features,
            means=env_floats(env, "DRIFT_MEANS", "0.5,0.5", len(features)),
            stddevs=stddevs,
            rate=env_float(env, "DRIFT_RATE", 10.0, minimum=0.0),
            max_messages=env_int(env, "DRIFT_MAX_MESSAGES", 0, minimum=0),
            invalid_share=invalid_share,
            seed=env_int(env, "DRIFT_SEED", 0) if seed_text else None,
            metrics_port=env_int(
                env, "DRIFT_PRODUCER_METRICS_PORT", 8001, minimum=0, maximum=PORT_MAX
            ),
            metrics_addr=env_str(env, "DRIFT_METRICS_ADDR", "0.0.0.0"),
            partitions=env_int(env, "DRIFT_PARTITIONS", 1, minimum=1, maximum=INT32_MAX),
            replication_factor=env_int(
                env, "DRIFT_REPLICATION_FACTOR", 1, minimum=1, maximum=INT16_MAX
            ),
        )


def make_message(config: ProducerConfig, rng: random.Random) -> tuple[bytes | None, str | None]:
    """One message value and, if malformed, the reason the consumer will give."""
    if config.invalid_share > 0 and rng.random() < config.invalid_share:
        return rng.choice(MALFORMED)
    row = {
        feature: rng.gauss(mean, sd)
        for feature, mean, sd in zip(config.features, config.means, config.stddevs, strict=True)
    }
    return json.dumps(row).encode("utf-8"), None


class Tally:
    """Acknowledged and failed sends; updated from kafka-python's I/O thread."""

    def __init__(self, metric: Any | None = None, failed_metric: Any | None = None) -> None:
        self._lock = threading.Lock()
        self.valid = 0
        self.invalid: Counter[str] = Counter()
        self.failed = 0
        self.failed_since_ack = 0
        self.last_ack = time.monotonic()
        self._metric, self._failed_metric = metric, failed_metric

    def acked(self, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self.valid += 1
            else:
                self.invalid[reason] += 1
            self.failed_since_ack = 0
            self.last_ack = time.monotonic()
        if self._metric is not None:
            self._metric.labels(kind="valid" if reason is None else "invalid").inc()

    def failed_send(self, error: Exception) -> None:
        with self._lock:
            self.failed += 1
            self.failed_since_ack += 1
        if self._failed_metric is not None:
            self._failed_metric.inc()
        logger.warning("send failed: %s", error)

    def stalled(self, seconds: float, now: float | None = None) -> bool:
        """Sends have failed and none was acknowledged for ``seconds``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return self.failed_since_ack > 0 and now - self.last_ack > seconds

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "valid": self.valid,
                "invalid": sum(self.invalid.values()),
                "failed": self.failed,
                "invalid_by_reason": dict(sorted(self.invalid.items())),
            }


def create_topic(config: ProducerConfig) -> bool:
    """Create the topic; False if it already existed (not an error)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=list(config.bootstrap_servers), bootstrap_timeout_ms=10000
    )
    try:
        admin.create_topics([NewTopic(config.topic, config.partitions, config.replication_factor)])
    except TopicAlreadyExistsError:
        logger.info("topic %s already exists", config.topic)
        return False
    finally:
        admin.close()
    logger.info("created topic %s (%d partitions)", config.topic, config.partitions)
    return True


def with_retries(what: str, action: Callable[[], T], stop: threading.Event) -> T | None:
    """``action()`` retried after KafkaErrors (broker not up yet); None if stopped first."""
    from kafka.errors import KafkaError

    delay = 1.0
    while not stop.is_set():
        try:
            return action()
        except KafkaError as error:
            logger.warning("%s failed (%s); retrying in %.0f s", what, error, delay)
            stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    return None


def produce(config: ProducerConfig, tally: Tally, stop: threading.Event) -> None:
    """Send messages at ``config.rate`` until max_messages are sent or ``stop`` is set."""
    from kafka import KafkaProducer

    producer = with_retries(
        "connecting",
        lambda: KafkaProducer(
            bootstrap_servers=list(config.bootstrap_servers),
            acks="all",
            linger_ms=5,
            bootstrap_timeout_ms=10000,
            max_block_ms=10000,  # a send waits this long for metadata, then fails
            # The topic's owner creates it with its partition count (--create-topic,
            # Ansible); a send must not create it first with the broker's defaults.
            allow_auto_create_topics=False,
        ),
        stop,
    )
    if producer is None:
        return
    rng = random.Random(config.seed)
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    next_send = time.monotonic()
    attempted = 0
    try:
        while not stop.is_set() and (config.max_messages == 0 or attempted < config.max_messages):
            send_one(producer, config.topic, *make_message(config, rng), tally)
            attempted += 1
            if tally.stalled(STALL_EXIT_S):
                logger.error("no send acknowledged for %.0f s: giving up", STALL_EXIT_S)
                break
            if interval:
                # A fixed schedule, not sleep(interval): send time does not slow the rate;
                # after a stall (broker outage) it restarts instead of bursting to catch up.
                next_send = max(next_send + interval, time.monotonic() - 1.0)
                stop.wait(max(0.0, next_send - time.monotonic()))
    finally:
        producer.flush()  # every callback has run after this
        producer.close()


def send_one(
    producer: Any, topic: str, value: bytes | None, reason: str | None, tally: Tally
) -> None:
    """Send one message; the tally learns its fate once the broker answers."""
    from kafka.errors import KafkaError

    key = b"tombstone" if value is None else None  # Kafka wants a key or a value
    try:
        future = producer.send(topic, key=key, value=value)
    except KafkaError as error:  # no metadata within max_block_ms: broker unreachable
        tally.failed_send(error)
        return
    future.add_callback(lambda _meta: tally.acked(reason))
    future.add_errback(tally.failed_send)


def start_metrics(config: ProducerConfig) -> tuple[Any, Any]:
    """The producer's counters, served on its own port unless that is 0."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    messages = Counter(
        "drift_producer_messages",
        "Training messages acknowledged by the broker.",
        ["kind"],
        registry=registry,
    )
    for kind in ("valid", "invalid"):
        messages.labels(kind=kind)
    failed = Counter(
        "drift_producer_failed", "Sends the broker did not acknowledge.", registry=registry
    )
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_addr, registry=registry)
    return messages, failed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--create-topic", action="store_true", help="create the topic, then send")
    group.add_argument("--only-create-topic", action="store_true", help="create it and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m modelserve.drift.producer``; the exit code."""
    args = parse_args(argv)
    env = os.environ if env is None else env
    setup_logging(env)
    try:
        config = ProducerConfig.from_env(env)
    except ConfigError as error:
        logger.error("bad configuration: %s", error)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.create_topic or args.only_create_topic:
        with_retries("creating the topic", lambda: create_topic(config), stop)
        if args.only_create_topic:
            return 0
    tally = Tally(*start_metrics(config))
    produce(config, tally, stop)
    summary = tally.summary()
    logger.info(
        "produced %d messages to %s: %d valid, %d invalid, %d failed",
        summary["valid"] + summary["invalid"],
        config.topic,
        summary["valid"],
        summary["invalid"],
        summary["failed"],
    )
    print(json.dumps(summary), flush=True)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
