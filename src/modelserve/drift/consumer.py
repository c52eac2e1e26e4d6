"""Training-data consumer: streaming statistics of the ``trainingdata`` topic for Prometheus.

Run: ``python -m modelserve.drift.consumer``.

Environment
===========
==============================  ===================  ==========================================
variable                        default              meaning
==============================  ===================  ==========================================
DRIFT_BOOTSTRAP_SERVERS         localhost:9092       comma-separated host:port of the brokers
DRIFT_TOPIC                     trainingdata         topic of training rows
DRIFT_GROUP_ID                  drift-consumer       consumer group (offsets, lag monitoring)
DRIFT_FEATURES                  x1,x2                feature names each row must carry
DRIFT_BUCKET_EDGES              (DEFAULT_EDGES)      JSON: ``[..]`` for all features or
                                                     ``{"x1": [..]}`` per feature (buckets.py)
DRIFT_STATE_FILE                /var/lib/drift/      state file (statistics + offsets)
                                state.json
DRIFT_METRICS_PORT              8000                 port of the Prometheus endpoint
DRIFT_METRICS_ADDR              0.0.0.0              address the endpoint listens on
DRIFT_MAX_POLL_INTERVAL_MS      60000                kafka max_poll_interval_ms
DRIFT_SESSION_TIMEOUT_MS        10000                kafka session_timeout_ms (see below)
DRIFT_MAX_POLL_RECORDS          500                  records per poll, i.e. per state save
DRIFT_POLL_TIMEOUT_MS           1000                 longest wait in one poll (stop latency)
DRIFT_REQUEST_TIMEOUT_MS        30000                kafka request_timeout_ms (commit, close)
DRIFT_FETCH_MAX_WAIT_MS         1000                 kafka fetch_max_wait_ms: a fetch waits
DRIFT_FETCH_MIN_BYTES           65536                this long for this many bytes (see below)
DRIFT_BACKOFF_INITIAL_S         1                    first wait after a broker error ...
DRIFT_BACKOFF_MAX_S             30                   ... doubling up to this
DRIFT_LOG_LEVEL                 INFO                 our log level
DRIFT_KAFKA_LOG_LEVEL           WARNING              kafka-python's log level
==============================  ===================  ==========================================

A message is a JSON object with a finite number for every feature (``{"x1": 0.4,
"x2": 0.7}``; other keys are ignored). Anything else is counted under one ``reason`` and
skipped: ``empty`` (no value / tombstone), ``not_json`` (not UTF-8 JSON), ``not_object``,
``missing_feature``, ``not_numeric`` (string, null, bool, array, ...), ``not_finite``
(NaN, Infinity, or a number too large for a float).

Counting exactly once
=====================
Counting and committing a Kafka offset are two writes; whatever their order, a crash
between them either loses or double counts a batch. So the Kafka offset is NOT the
source of truth. The state file is: one JSON document holding the statistics (valid and
invalid counts, RunningStats and bucket counts per feature) *and* the next offset per
partition that those statistics cover, replaced atomically (temp file, fsync, rename,
fsync of the directory). For each poll batch the consumer

1. applies every record to the in-memory state, skipping a record whose offset is below
   the state's offset for its partition (a redelivery),
2. saves the state file (statistics and offsets in one atomic write),
3. commits the same offsets to the group (informational: lag monitoring, tooling),
4. publishes the saved state to the metrics endpoint.

On start (and on every partition assignment) it seeks each partition to the offset in
the state file, ignoring the group's committed offset. A crash before step 2 loses the
in-memory work of that batch and re-reads it; a crash after step 2 re-reads nothing.
Either way each record is counted once. Because metrics are published only after the
save, the exported values never run ahead of the file, so after a restart they never go
down and counters stay monotonic.

A partition without an offset in the state file is read from its beginning: a missing,
unreadable or incompatible state file (other topic, features or bucket edges; the old
file is kept as ``<file>.discarded``) rebuilds the statistics from all the data the
topic still retains. If the topic is deleted and recreated (its topic id changes), the
statistics are kept and the new topic is read from its beginning. The id is checked on
every assignment and before every batch, but it comes from metadata, which can lag a
fetch: records fetched from a NEW topic at the OLD positions before the consumer's
metadata shows the new id would be counted, then counted again from offset 0. So
recreate the topic with the consumer stopped (or with it running but before writing to
the new topic; the consumer does not create topics itself).

Assumptions: one consumer process per state file, and it is the group's only member,
so it is assigned every partition (the statistics are of the whole topic). A second
member would get some partitions and its own partial statistics.

Metrics (all at DRIFT_METRICS_PORT, ``/metrics``)
=================================================
``drift_training_messages_total``                   counter  valid rows counted
``drift_training_invalid_messages_total{reason}``   counter  skipped messages per reason
``drift_training_count{feature}``                   gauge    values counted (= valid rows)
``drift_training_mean{feature}``                    gauge    mean (NaN when no row)
``drift_training_stddev{feature}``                  gauge    sample sd, n-1 (NaN when < 2)
``drift_training_bucket{feature,le}``               gauge    values <= le, cumulative like a
                                                             histogram bucket; le="+Inf" is
                                                             the count. le is written as
                                                             prometheus_client writes it
                                                             (buckets.le_label): "0.1", "+Inf"
``drift_consumer_offset{topic,partition}``          gauge    next offset the statistics cover
``drift_consumer_broker_errors_total``              counter  Kafka errors that forced a
                                                             reconnect (with backoff)

All ``reason`` series exist from the start at 0, so PromQL never meets a missing series.

Broker outages
==============
The consumer is (re)built in a loop: no broker at start (kafka-python 3 raises
KafkaTimeoutError "Unable to bootstrap" after 5 s, where 2.x raised NoBrokersAvailable;
both are KafkaErrors), or any KafkaError escaping a poll, is logged, counted, and
followed by a backoff (doubling up to DRIFT_BACKOFF_MAX_S) and a fresh consumer; the
metrics endpoint keeps serving the last saved state meanwhile. Outages while running
are mostly absorbed inside kafka-python, which reconnects and rejoins the group by
itself (tests/integration: a broker frozen for 8 s, and a broker restart).

Group join: ``session_timeout_ms`` bounds how long a SIGKILLed member keeps its
partitions. With the Tansu broker a join also takes about half of the session timeout
(measured: 45 s session -> 23 s join, 6 s -> 3 s; max_poll_interval_ms made no
difference), hence the 10 s default; kafka-python's heartbeat is set to a third of it.

Fetching: a fetch waits up to DRIFT_FETCH_MAX_WAIT_MS for DRIFT_FETCH_MIN_BYTES, so a
trickle of rows (the producer's 10 a second) costs one fetch and one commit a second, not
one per row. Each request costs the Kafka stand-in (Tansu, in memory) more as it holds
more rows: measured with its binary, a fetch and commit per row took 1.2 ms of its CPU per
row at 3,000 rows and 4.2 ms at 15,000; one per ten rows 0.18 and 0.44 ms. A row reaches
the statistics up to a second later, which drift detection over minutes does not see.

SIGTERM / SIGINT: the current batch is finished and saved, offsets committed, the
consumer closed (leaving the group), and the process exits 0 - within about a second,
or up to 5 s while it is waiting for an absent broker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelserve.buckets import BucketCounts
from modelserve.parsing import REASONS, InvalidInput, named_row

from .envconfig import (
    INT32_MAX,
    PORT_MAX,
    ConfigError,
    bucket_edges,
    env_float,
    env_int,
    env_list,
    env_str,
    setup_logging,
)
from .stats import RunningStats

logger = logging.getLogger("drift.consumer")

STATE_VERSION = 1
COUNTED = "counted"
DUPLICATE = "duplicate"


# --------------------------------------------------------------------------- parsing

# A message that is not a training row; ``reason`` is one of REASONS.
InvalidMessage = InvalidInput


def parse_row(value: bytes | None, features: Sequence[str]) -> tuple[float, ...]:
    """The feature values of a training message, in ``features`` order.

    Raises InvalidMessage (with its reason) for anything that is not a valid row.
    """
    return named_row(value, features)


# --------------------------------------------------------------------------- state


class RecordLike(Protocol):
    """What the processing core needs of a Kafka record (ConsumerRecord has it)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class DriftState:
    """Everything the metrics show, plus the offsets it covers; saved as one file."""

    topic: str
    features: tuple[str, ...]
    edges: dict[str, tuple[float, ...]]
    stats: dict[str, RunningStats] = field(default_factory=dict)
    buckets: dict[str, BucketCounts] = field(default_factory=dict)
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    # partition -> offset of the next record to count (last counted offset + 1).
    offsets: dict[int, int] = field(default_factory=dict)
    # Kafka topic id the offsets belong to; a different id means the topic was recreated.
    topic_id: str | None = None

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        for feature in self.features:
            self.stats.setdefault(feature, RunningStats())
            self.buckets.setdefault(feature, BucketCounts(self.edges[feature]))
        for reason in REASONS:
            self.invalid.setdefault(reason, 0)

    def matches(self, topic: str, features: Sequence[str], edges: Mapping) -> bool:
        """Whether this state counts the same thing as the given configuration."""
        return (
            self.topic == topic
            and self.features == tuple(features)
            and all(self.edges[f] == tuple(edges[f]) for f in self.features)
        )

    def apply(self, partition: int, offset: int, value: bytes | None) -> str:
        """Count one record; COUNTED, DUPLICATE (already covered) or the invalid reason."""
        covered = self.offsets.get(partition)
        if covered is not None and offset < covered:
            return DUPLICATE
        try:
            row = parse_row(value, self.features)
        except InvalidMessage as error:
            self.invalid[error.reason] += 1
            outcome = error.reason
        else:
            for feature, x in zip(self.features, row, strict=True):
                self.stats[feature].add(x)
                self.buckets[feature].add(x)
            self.valid += 1
            outcome = COUNTED
        self.offsets[partition] = offset + 1
        return outcome

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document (the state file's content)."""
        return {
            "version": STATE_VERSION,
            "topic": self.topic,
            "topic_id": self.topic_id,
            "features": list(self.features),
            "edges": {f: list(self.edges[f]) for f in self.features},
            "valid": self.valid,
            "invalid": dict(self.invalid),
            "stats": {f: self.stats[f].to_dict() for f in self.features},
            "buckets": {f: list(self.buckets[f].counts) for f in self.features},
            # JSON object keys are strings.
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftState:
        """Inverse of ``to_dict``; raises ValueError/KeyError/TypeError on a bad document."""
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a state document of version {STATE_VERSION}")
        features = tuple(data["features"])
        edges = {f: tuple(float(e) for e in data["edges"][f]) for f in features}
        invalid = {str(k): int(v) for k, v in data["invalid"].items()}
        state = cls(
            topic=str(data["topic"]),
            features=features,
            edges=edges,
            stats={f: RunningStats.from_dict(data["stats"][f]) for f in features},
            buckets={
                f: BucketCounts(edges[f], [int(c) for c in data["buckets"][f]]) for f in features
            },
            valid=int(data["valid"]),
            invalid=invalid,
            offsets={int(p): int(o) for p, o in data["offsets"].items()},
            topic_id=data.get("topic_id"),
        )
        state.check_consistency()
        return state

    def check_consistency(self) -> None:
        """Every feature counted every valid row: a cheap guard against a tampered file."""
        for feature in self.features:
            if not self.stats[feature].count == self.buckets[feature].total == self.valid:
                raise ValueError(f"state counts of {feature!r} disagree with valid={self.valid}")
        if any(v < 0 for v in self.invalid.values()) or any(o < 0 for o in self.offsets.values()):
            raise ValueError("negative count or offset in state")


def process_records(state: DriftState, records: Iterable[RecordLike]) -> Counter[str]:
    """Apply records in order; how many of each outcome (COUNTED, DUPLICATE, reasons)."""
    outcomes: Counter[str] = Counter()
    for record in records:
        outcomes[state.apply(record.partition, record.offset, record.value)] += 1
    return outcomes


def save_state(path: Path, state: DriftState) -> None:
    """Replace ``path`` with the state atomically: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state.to_dict(), handle, allow_nan=False, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the rename points to it
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # ... and the rename itself survives a power cut


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(
    path: Path, topic: str, features: Sequence[str], edges: Mapping[str, Sequence[float]]
) -> DriftState:
    """The saved state if it fits the configuration, else a fresh one (see module doc)."""
    fresh = DriftState(topic, tuple(features), {f: tuple(edges[f]) for f in features})
    if not path.exists():
        logger.info("no state file %s: counting the topic from its beginning", path)
        return fresh
    try:
        state = DriftState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = f"unreadable ({error})"
    else:
        if state.matches(topic, features, edges):
            logger.info(
                "resuming from %s: %d valid rows, offsets %s", path, state.valid, state.offsets
            )
            return state
        reason = "for another topic, feature list or bucket edges"
    discarded = path.with_name(path.name + ".discarded")
    os.replace(path, discarded)
    logger.warning(
        "state file %s is %s; kept as %s, rebuilding from the topic's beginning",
        path,
        reason,
        discarded,
    )
    return fresh


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class FeatureSnapshot:
    """What the metrics show of one feature."""

    count: int
    mean: float
    stddev: float
    cumulative: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class StateSnapshot:
    """An immutable copy of a saved state, so a scrape never sees a half-applied batch."""

    topic: str
    valid: int
    invalid: tuple[tuple[str, int], ...]
    features: tuple[tuple[str, FeatureSnapshot], ...]
    offsets: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, state: DriftState) -> StateSnapshot:
        """Snapshot of ``state`` as it is now."""
        return cls(
            topic=state.topic,
            valid=state.valid,
            invalid=tuple(sorted(state.invalid.items())),
            features=tuple(
                (
                    f,
                    FeatureSnapshot(
                        count=state.stats[f].count,
                        mean=state.stats[f].mean,
                        stddev=state.stats[f].stddev,
                        cumulative=tuple(state.buckets[f].cumulative()),
                    ),
                )
                for f in state.features
            ),
            offsets=tuple(sorted(state.offsets.items())),
        )


class DriftCollector:
    """prometheus_client collector that renders the last published snapshot."""

    def __init__(self, snapshot: StateSnapshot) -> None:
        self._snapshot = snapshot

    def publish(self, state: DriftState) -> None:
        """Show ``state`` from the next scrape on (call only after it is saved)."""
        # Rebinding one attribute is atomic, so the HTTP thread needs no lock.
        self._snapshot = StateSnapshot.of(state)

    def collect(self) -> Iterable[Any]:
        """Metric families of the current snapshot."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot
        yield CounterMetricFamily(
            "drift_training_messages", "Valid training rows counted.", value=snap.valid
        )
        invalid = CounterMetricFamily(
            "drift_training_invalid_messages",
            "Training messages skipped as malformed, by reason.",
            labels=["reason"],
        )
        for reason, count in snap.invalid:
            invalid.add_metric([reason], count)
        yield invalid
        yield from _feature_families(snap, GaugeMetricFamily)
        offsets = GaugeMetricFamily(
            "drift_consumer_offset",
            "Next offset per partition that the exported statistics cover.",
            labels=["topic", "partition"],
        )
        for partition, offset in snap.offsets:
            offsets.add_metric([snap.topic, str(partition)], offset)
        yield offsets


def _feature_families(snap: StateSnapshot, gauge: Any) -> Iterable[Any]:
    count = gauge("drift_training_count", "Training values counted.", labels=["feature"])
    mean = gauge("drift_training_mean", "Mean of the training values.", labels=["feature"])
    stddev = gauge(
        "drift_training_stddev",
        "Sample standard deviation (n-1) of the training values.",
        labels=["feature"],
    )
    bucket = gauge(
        "drift_training_bucket",
        "Training values <= le (cumulative, fixed edges shared with the live side).",
        labels=["feature", "le"],
    )
    for feature, fs in snap.features:
        count.add_metric([feature], fs.count)
        mean.add_metric([feature], fs.mean)
        stddev.add_metric([feature], fs.stddev)
        for le, cumulative in fs.cumulative:
            bucket.add_metric([feature, le], cumulative)
    return count, mean, stddev, bucket


# --------------------------------------------------------------------------- kafka


def kafka_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """A setting kafka-python sends as a 32-bit field: a larger one would fail every request."""
    return env_int(env, name, default, minimum=minimum, maximum=INT32_MAX)


@dataclass(frozen=True)
class ConsumerConfig:
    """Settings of the consumer, from DRIFT_* variables (see module doc)."""

    bootstrap_servers: tuple[str, ...] = ("localhost:9092",)
    topic: str = "trainingdata"
    group_id: str = "drift-consumer"
    features: tuple[str, ...] = ("x1", "x2")
    edges: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    state_file: Path = Path("/var/lib/drift/state.json")
    metrics_port: int = 8000
    metrics_addr: str = "0.0.0.0"
    max_poll_interval_ms: int = 60000
    session_timeout_ms: int = 10000
    max_poll_records: int = 500
    poll_timeout_ms: int = 1000
    request_timeout_ms: int = 30000
    fetch_max_wait_ms: int = 1000
    fetch_min_bytes: int = 65536
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsumerConfig:
        """Configuration from the environment; ConfigError names a bad variable."""
        features = env_list(env, "DRIFT_FEATURES", "x1,x2")
        config = cls(
            bootstrap_servers=env_list(env, "DRIFT_BOOTSTRAP_SERVERS", "localhost:9092"),
            topic=env_str(env, "DRIFT_TOPIC", "trainingdata"),
            group_id=env_str(env, "DRIFT_GROUP_ID", "drift-consumer"),
            features=features,
            edges=bucket_edges(env.get("DRIFT_BUCKET_EDGES"), features),
            state_file=Path(env_str(env, "DRIFT_STATE_FILE", "/var/lib/drift/state.json")),
            metrics_port=env_int(env, "DRIFT_METRICS_PORT", 8000, minimum=0, maximum=PORT_MAX),
            metrics_addr=env_str(env, "DRIFT_METRICS_ADDR", "0.0.0.0"),
            max_poll_interval_ms=kafka_int(env, "DRIFT_MAX_POLL_INTERVAL_MS", 60000, 1),
            session_timeout_ms=kafka_int(env, "DRIFT_SESSION_TIMEOUT_MS", 10000, 3),
            max_poll_records=kafka_int(env, "DRIFT_MAX_POLL_RECORDS", 500, 1),
            poll_timeout_ms=env_int(env, "DRIFT_POLL_TIMEOUT_MS", 1000, minimum=0),
            request_timeout_ms=kafka_int(env, "DRIFT_REQUEST_TIMEOUT_MS", 30000, 1000),
            fetch_max_wait_ms=kafka_int(env, "DRIFT_FETCH_MAX_WAIT_MS", 1000, 0),
            fetch_min_bytes=kafka_int(env, "DRIFT_FETCH_MIN_BYTES", 65536, 1),
            backoff_initial_s=env_float(env, "DRIFT_BACKOFF_INITIAL_S", 1.0, minimum=0.0),
            backoff_max_s=env_float(env, "DRIFT_BACKOFF_MAX_S", 30.0, minimum=0.0),
        )
        if config.request_timeout_ms <= config.fetch_max_wait_ms:  # kafka-python's rule
            raise ConfigError(
                f"DRIFT_REQUEST_TIMEOUT_MS ({config.request_timeout_ms}) must be above "
                f"DRIFT_FETCH_MAX_WAIT_MS ({config.fetch_max_wait_ms})"
            )
        return config


def build_consumer(config: ConsumerConfig) -> Any:
    """A KafkaConsumer that never commits by itself; raises a KafkaError if no broker is up."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=list(config.bootstrap_servers),
        group_id=config.group_id,
        client_id=f"{config.group_id}-{os.getpid()}",
        enable_auto_commit=False,  # offsets follow the state file, see module doc
        auto_offset_reset="earliest",  # an offset that left retention: take what is left
        # The topic is created by its owner (drift.producer --create-topic, Ansible) with
        # its partition count; a consumer creating it with broker defaults would pre-empt.
        allow_auto_create_topics=False,
        max_poll_interval_ms=config.max_poll_interval_ms,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=max(1, config.session_timeout_ms // 3),
        max_poll_records=config.max_poll_records,
        request_timeout_ms=config.request_timeout_ms,
        # Rows come in a trickle: one fetch a second takes them all, where a fetch per row
        # costs the broker a request each (the stand-in's grows with what it holds).
        fetch_max_wait_ms=config.fetch_max_wait_ms,
        fetch_min_bytes=config.fetch_min_bytes,
        # Keep bootstrap short so the outer loop (which logs and counts) sees an outage.
        bootstrap_timeout_ms=min(config.request_timeout_ms, 5000),
        reconnect_backoff_max_ms=int(max(config.backoff_max_s, 0.05) * 1000),
    )


def current_topic_id(consumer: Any, topic: str) -> str | None:
    """The topic's Kafka id from the consumer's metadata, or None if unknown.

    kafka-python 3.0 keeps it in its (private) cluster metadata; if that ever moves,
    this returns None and only topic-recreation detection is lost.
    """
    try:
        topic_id = consumer._cluster.topic_id(topic)
    except Exception:  # private API: never let it break consuming
        return None
    return str(topic_id) if topic_id is not None else None


class Backoff:
    """Doubling waits between reconnects, reset after a successful poll."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.next = initial

    def reset(self) -> None:
        self.next = self.initial

    def take(self) -> float:
        """The wait to do now; doubles the following one."""
        delay = self.next
        self.next = min(self.maximum, max(self.next * 2, 0.1))
        return delay


class DriftConsumer:
    """The poll -> apply -> save -> commit -> publish loop, surviving broker outages."""

    def __init__(
        self,
        config: ConsumerConfig,
        state: DriftState,
        collector: DriftCollector,
        broker_errors: Any | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.collector = collector
        self.broker_errors = broker_errors  # a prometheus Counter, or None
        self.stop_event = threading.Event()
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch and exit (usable as a signal handler)."""
        self.stop_event.set()

    def run(self) -> None:
        """Consume until stopped, rebuilding the consumer after broker errors."""
        from kafka.errors import KafkaError

        while not self.stop_event.is_set():
            consumer = None
            try:
                consumer = build_consumer(self.config)
                self._consume(consumer)
            except KafkaError as error:
                self._broker_error(error)
            finally:
                if consumer is not None:
                    self._close(consumer)

    def _broker_error(self, error: Exception) -> None:
        if self.broker_errors is not None:
            self.broker_errors.inc()
        delay = self.backoff.take()
        logger.warning(
            "Kafka error (%s: %s); reconnecting in %.1f s", type(error).__name__, error, delay
        )
        self.stop_event.wait(delay)

    def _consume(self, consumer: Any) -> None:
        from kafka import ConsumerRebalanceListener

        runner = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                # Nothing pending: the state is saved after every batch.
                logger.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                runner.on_assigned(consumer, assigned)

        consumer.subscribe([self.config.topic], listener=Listener())
        logger.info("subscribed to %s as group %s", self.config.topic, self.config.group_id)
        while not self.stop_event.is_set():
            batches = consumer.poll(
                timeout_ms=self.config.poll_timeout_ms,
                max_records=self.config.max_poll_records,
            )
            self.backoff.reset()
            records = [r for tp in sorted(batches) for r in batches[tp]]
            if records:
                self.handle_batch(consumer, records)

    def on_assigned(self, consumer: Any, assigned: Iterable[Any]) -> None:
        """Seek every assigned partition to the offset the state covers."""
        assigned = sorted(assigned)
        self._topic_recreated(consumer)
        self._seek(consumer, assigned)
        logger.info(
            "assigned partitions %s; resuming at %s",
            [tp.partition for tp in assigned],
            {tp.partition: self.state.offsets.get(tp.partition, "beginning") for tp in assigned},
        )

    def _seek(self, consumer: Any, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            offset = self.state.offsets.get(tp.partition)
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)

    def _topic_recreated(self, consumer: Any) -> bool:
        """Record the topic id; True (and offsets dropped) if the topic was recreated."""
        topic_id = current_topic_id(consumer, self.config.topic)
        if topic_id is None or topic_id == self.state.topic_id:
            return False
        recreated = self.state.topic_id is not None
        if recreated:
            logger.warning(
                "topic %s was recreated (id %s -> %s): keeping the statistics, reading the "
                "new topic from its beginning",
                self.config.topic,
                self.state.topic_id,
                topic_id,
            )
            self.state.offsets.clear()
        self.state.topic_id = topic_id
        save_state(self.config.state_file, self.state)
        return recreated

    def handle_batch(self, consumer: Any, records: Sequence[RecordLike]) -> None:
        """Apply, save, commit and publish one poll batch (in that order, see module doc)."""
        if self._topic_recreated(consumer):
            # Fetched at the old topic's positions: drop them, start the new one at 0.
            self._seek(consumer, sorted(consumer.assignment()))
            return
        outcomes = process_records(self.state, records)
        if outcomes[DUPLICATE] == len(records):
            return  # nothing new: the saved state already covers these
        save_state(self.config.state_file, self.state)
        self._commit(consumer)
        self.collector.publish(self.state)
        logger.debug("batch of %d records: %s", len(records), dict(outcomes))

    def _commit(self, consumer: Any) -> None:
        """Commit the state's offsets of the assigned partitions; failure is harmless."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assigned = {tp.partition for tp in consumer.assignment()}
        offsets = {
            TopicPartition(self.config.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in self.state.offsets.items()
            if p in assigned
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=self.config.request_timeout_ms)
        except KafkaError as error:
            # The state file already holds these offsets; the group's copy is informational.
            logger.warning("offset commit failed (%s); the state file has them", error)

    def _close(self, consumer: Any) -> None:
        """Commit what the state covers and leave the group; never raises."""
        try:
            if self.stop_event.is_set():
                self._commit(consumer)
            consumer.close(autocommit=False, timeout_ms=self.config.request_timeout_ms)
        except Exception as error:  # closing a consumer of a dead broker must not crash us
            logger.warning("closing the consumer failed: %s", error)


def start_metrics(config: ConsumerConfig, state: DriftState) -> tuple[DriftCollector, Any]:
    """Serve the state's metrics; returns the collector and the broker error counter."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    collector = DriftCollector(StateSnapshot.of(state))
    registry.register(collector)
    broker_errors = Counter(
        "drift_consumer_broker_errors",
        "Kafka errors that made the consumer reconnect.",
        registry=registry,
    )
    start_http_server(config.metrics_port, addr=config.metrics_addr, registry=registry)
    return collector, broker_errors


def main(env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m drift.consumer``; the exit code."""
    env = os.environ if env is None else env
    setup_logging(env)
    try:
        config = ConsumerConfig.from_env(env)
    except ConfigError as error:
        logger.error("bad configuration: %s", error)
        return 2
    state = load_state(config.state_file, config.topic, config.features, config.edges)
    collector, broker_errors = start_metrics(config, state)
    runner = DriftConsumer(config, state, collector, broker_errors)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    logger.info(
        "drift consumer: topic %s at %s, metrics on %s:%d, state %s",
        config.topic,
        ",".join(config.bootstrap_servers),
        config.metrics_addr,
        config.metrics_port,
        config.state_file,
    )
    runner.run()
    save_state(config.state_file, state)  # already saved per batch; cheap and explicit
    logger.info(
        "stopped: %d valid rows, invalid %s, offsets %s",
        state.valid,
        {r: n for r, n in state.invalid.items() if n},
        state.offsets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
