"""drift.consumer without a broker: parsing, state file, exactly-once restarts, metrics."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry, generate_latest

from modelserve.buckets import DEFAULT_EDGES
from modelserve.drift import consumer as dc
from modelserve.drift.envconfig import ConfigError, bucket_edges
from modelserve.drift.producer import MALFORMED, ProducerConfig, Tally, make_message

FEATURES = ("x1", "x2")
EDGES = dict.fromkeys(FEATURES, DEFAULT_EDGES)
TOPIC = "trainingdata"


@dataclass
class Record:
    """Stands in for kafka's ConsumerRecord."""

    partition: int
    offset: int
    value: bytes | None


def fresh_state() -> dc.DriftState:
    return dc.DriftState(TOPIC, FEATURES, dict(EDGES))


def log_of(n: int, seed: int = 0, invalid_share: float = 0.2) -> list[Record]:
    """A partition-0 log of n messages from the producer's own generator."""
    config = ProducerConfig.from_env(
        {"DRIFT_INVALID_SHARE": str(invalid_share), "DRIFT_SEED": str(seed)}
    )
    rng = random.Random(seed)
    return [Record(0, offset, make_message(config, rng)[0]) for offset in range(n)]


def comparable(state: dc.DriftState) -> dict[str, Any]:
    """What the metrics are made of (the topic id depends on the fake broker)."""
    return {k: v for k, v in state.to_dict().items() if k != "topic_id"}


# --------------------------------------------------------------------------- parsing


def test_a_row_gives_its_features_in_order_and_ignores_other_keys() -> None:
    value = b'{"x2": 2, "x1": 0.25, "label": "a"}'
    assert dc.parse_row(value, FEATURES) == (0.25, 2.0)


@pytest.mark.parametrize(("value", "reason"), MALFORMED)
def test_every_malformed_sample_of_the_producer_gets_its_reason(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(dc.InvalidMessage) as caught:
        dc.parse_row(value, FEATURES)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not_json"),  # deep nesting: RecursionError
        (b"null", "not_object"),
        (b"3.5", "not_object"),
        (b'{"x1": [0.5], "x2": 0.5}', "not_numeric"),
        (b'{"x1": {"v": 1}, "x2": 0.5}', "not_numeric"),
        (b'{"x1": false, "x2": 0.5}', "not_numeric"),
        (b'{"x1": -Infinity, "x2": 0.5}', "not_finite"),
        (b'{"x1": 0.5, "x2": 1' + b"0" * 400 + b"}", "not_finite"),  # int too big for float
        (b'{"X1": 0.5, "x2": 0.5}', "missing_feature"),
        (b'{"x1": 1' + b"0" * 5000 + b', "x2": 0.5}', "not_json"),  # int digit limit
        (b'\xef\xbb\xbf{"x1": 0.5, "x2": 0.5}', "not_json"),  # byte order mark
    ],
)
def test_more_malformed_messages(value: bytes, reason: str) -> None:
    with pytest.raises(dc.InvalidMessage) as caught:
        dc.parse_row(value, FEATURES)
    assert caught.value.reason == reason
    assert reason in dc.REASONS


def test_no_byte_string_crashes_the_parser() -> None:
    # Random bytes and single-byte mutations of valid rows: a row of finite floats or
    # an InvalidMessage with a known reason, never anything else.
    rng = random.Random(0)
    valid = b'{"x1": 0.4, "x2": -1.5e-3}'
    samples = [rng.randbytes(rng.randrange(0, 40)) for _ in range(2000)]
    for _ in range(3000):
        mutated = bytearray(valid)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        samples.append(bytes(mutated))
    for value in samples:
        try:
            row = dc.parse_row(value, FEATURES)
        except dc.InvalidMessage as error:
            assert error.reason in dc.REASONS
        else:
            assert len(row) == 2
            assert all(math.isfinite(x) for x in row)


def test_reasons_of_the_producer_are_the_consumer_reasons() -> None:
    assert {reason for _, reason in MALFORMED} == set(dc.REASONS)


# --------------------------------------------------------------------------- state


def test_apply_counts_rows_and_reasons_and_skips_what_is_covered() -> None:
    state = fresh_state()
    assert state.apply(0, 0, b'{"x1": 0.5, "x2": 0.1}') == dc.COUNTED
    assert state.apply(0, 1, b"nope") == "not_json"
    assert state.apply(0, 0, b'{"x1": 0.5, "x2": 0.1}') == dc.DUPLICATE
    assert state.apply(1, 0, b'{"x1": 0.7, "x2": 0.3}') == dc.COUNTED
    assert state.valid == 2
    assert state.invalid["not_json"] == 1
    assert state.offsets == {0: 2, 1: 1}
    assert state.stats["x1"].mean == pytest.approx(0.6)
    assert state.buckets["x2"].counts[0] == 1  # 0.1 <= 0.1: first bucket


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = fresh_state()
    dc.process_records(state, log_of(500))
    state.topic_id = "abc"
    path = tmp_path / "sub" / "state.json"
    dc.save_state(path, state)
    loaded = dc.load_state(path, TOPIC, FEATURES, EDGES)
    assert comparable(loaded) == comparable(state)
    # Floats survive exactly: the statistics go on as if there had been no restart.
    assert loaded.stats["x1"].to_dict() == state.stats["x1"].to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_missing_state_starts_fresh(tmp_path: Path) -> None:
    state = dc.load_state(tmp_path / "none.json", TOPIC, FEATURES, EDGES)
    assert state.valid == 0
    assert state.offsets == {}


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 99}', "[]", '{"version": 1, "topic": "trainingdata"}'],
)
def test_unreadable_state_is_kept_aside_and_rebuilt(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    state = dc.load_state(path, TOPIC, FEATURES, EDGES)
    assert state.offsets == {}
    assert not path.exists()
    assert (tmp_path / "state.json.discarded").read_text() == content


def test_state_of_other_edges_or_features_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = fresh_state()
    dc.process_records(state, log_of(10))
    dc.save_state(path, state)
    other_edges = {"x1": (0.0, 1.0), "x2": DEFAULT_EDGES}
    assert dc.load_state(path, TOPIC, FEATURES, other_edges).valid == 0
    dc.save_state(path, state)
    assert dc.load_state(path, TOPIC, ("x1",), {"x1": DEFAULT_EDGES}).valid == 0
    dc.save_state(path, state)
    assert dc.load_state(path, "other", FEATURES, EDGES).valid == 0


def test_tampered_counts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = fresh_state()
    dc.process_records(state, log_of(10, invalid_share=0))
    document = state.to_dict()
    document["valid"] += 1
    path.write_text(json.dumps(document))
    assert dc.load_state(path, TOPIC, FEATURES, EDGES).valid == 0


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    state = fresh_state()
    dc.save_state(path, state)
    before = path.read_text()
    state.valid = 1  # inconsistent on purpose: json.dump is made to fail below

    def boom(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dc.json, "dump", boom)
    with pytest.raises(OSError):
        dc.save_state(path, state)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# --------------------------------------------------------------------------- exactly once


class Crash(Exception):
    """Stands for a SIGKILL at some point of the batch handling."""


class FakeConsumer:
    """The part of KafkaConsumer that DriftConsumer uses, with crash points."""

    def __init__(self, log: list[Record] | None = None, topic_id: str | None = "id-1") -> None:
        self.log = log or []
        self.position = 0
        self.committed: dict[int, int] = {}
        self.seeks: list[tuple[int, int | str]] = []
        self.crash_on_commit = False
        self.closed = False
        self.listener: Any = None
        self.stop_after_polls: tuple[int, Any] | None = None
        self.polls = 0
        topic_ids = {TOPIC: topic_id}
        self._cluster = type("Cluster", (), {"topic_id": staticmethod(topic_ids.get)})()

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        if self.crash_on_commit:
            raise Crash("killed between save and commit")
        for tp, meta in offsets.items():
            self.committed[tp.partition] = meta.offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))
        self.position = offset

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, "beginning"))
        self.position = 0

    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics == [TOPIC]
        self.listener = listener
        listener.on_partitions_assigned({TopicPartition(TOPIC, 0)})

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.polls += 1
        if self.stop_after_polls and self.polls >= self.stop_after_polls[0]:
            self.stop_after_polls[1].stop()
        batch = self.log[self.position : self.position + (max_records or 500)]
        self.position += len(batch)
        return {TopicPartition(TOPIC, 0): batch} if batch else {}

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        assert autocommit is False
        self.closed = True


def runner_for(tmp_path: Path, **overrides: Any) -> dc.DriftConsumer:
    env = {
        "DRIFT_STATE_FILE": str(tmp_path / "state.json"),
        "DRIFT_BACKOFF_INITIAL_S": "0",
        "DRIFT_BACKOFF_MAX_S": "0",
        "DRIFT_MAX_POLL_RECORDS": "7",
        **overrides,
    }
    config = dc.ConsumerConfig.from_env(env)
    state = dc.load_state(config.state_file, config.topic, config.features, config.edges)
    return dc.DriftConsumer(config, state, dc.DriftCollector(dc.StateSnapshot.of(state)))


def one_pass(log: list[Record]) -> dict[str, Any]:
    state = fresh_state()
    dc.process_records(state, log)
    return comparable(state)


@pytest.mark.parametrize("crash_batch", [0, 3, 9])
@pytest.mark.parametrize("crash_point", ["before_save", "before_commit"])
@pytest.mark.parametrize("replay_from", ["committed", "zero"])
def test_restart_after_a_crash_counts_every_record_once(
    tmp_path: Path, crash_batch: int, crash_point: str, replay_from: str
) -> None:
    log = log_of(100, seed=crash_batch)
    runner = runner_for(tmp_path)
    kafka = FakeConsumer(log)
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0)])
    for batch_number in range(crash_batch + 1):
        batch = kafka.poll(max_records=7)[TopicPartition(TOPIC, 0)]
        if batch_number < crash_batch:
            runner.handle_batch(kafka, batch)
    # The crashing batch: counted in memory, then killed before the save or the commit.
    if crash_point == "before_save":
        dc.process_records(runner.state, batch)
    else:
        kafka.crash_on_commit = True
        with pytest.raises(Crash):
            runner.handle_batch(kafka, batch)

    # Restart: a new process loads the file; the group resumes at its committed offset,
    # which lags the file when the crash came between save and commit. "zero" is the
    # worst case of a broker redelivering the whole log (e.g. lost group offsets).
    restarted = runner_for(tmp_path)
    kafka2 = FakeConsumer(log)
    kafka2.position = kafka.committed.get(0, 0) if replay_from == "committed" else 0
    while batches := kafka2.poll(max_records=7):
        restarted.handle_batch(kafka2, batches[TopicPartition(TOPIC, 0)])
    assert comparable(restarted.state) == one_pass(log)
    saved = dc.load_state(tmp_path / "state.json", TOPIC, FEATURES, EDGES)
    assert comparable(saved) == one_pass(log)
    assert kafka2.committed == {0: 100}


def test_assignment_seeks_to_the_state_offsets_not_the_group_offsets(tmp_path: Path) -> None:
    runner = runner_for(tmp_path)
    kafka = FakeConsumer(log_of(30))
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert kafka.seeks == [(0, "beginning"), (1, "beginning")]
    runner.state.offsets = {0: 12}
    kafka.seeks.clear()
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert kafka.seeks == [(0, 12), (1, "beginning")]


def test_a_recreated_topic_is_read_from_its_beginning_keeping_the_statistics(
    tmp_path: Path,
) -> None:
    runner = runner_for(tmp_path)
    kafka = FakeConsumer(log_of(20), topic_id="old")
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0)])
    runner.handle_batch(kafka, kafka.poll(max_records=20)[TopicPartition(TOPIC, 0)])
    valid_before = runner.state.valid
    assert runner.state.offsets == {0: 20}

    new_log = log_of(5, seed=9)  # the new topic's offsets start at 0 again
    recreated = FakeConsumer(new_log, topic_id="new")
    runner.on_assigned(recreated, [TopicPartition(TOPIC, 0)])
    assert recreated.seeks == [(0, "beginning")]
    runner.handle_batch(recreated, recreated.poll(max_records=20)[TopicPartition(TOPIC, 0)])
    assert runner.state.topic_id == "new"
    assert runner.state.offsets == {0: 5}
    assert runner.state.valid > valid_before
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["topic_id"] == "new"


def test_a_batch_fetched_from_a_recreated_topic_is_dropped_and_reread(tmp_path: Path) -> None:
    runner = runner_for(tmp_path)
    kafka = FakeConsumer(log_of(20), topic_id="old")
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0)])
    runner.handle_batch(kafka, kafka.poll(max_records=10)[TopicPartition(TOPIC, 0)])
    counted_before = comparable(runner.state)

    # The topic is recreated under the running consumer; its metadata already shows the
    # new id when a fetch at the old position (10) returns the new topic's records.
    new_log = log_of(15, seed=5)
    kafka.log, kafka._cluster.topic_id = new_log, {TOPIC: "new"}.get
    kafka.seeks.clear()
    runner.handle_batch(kafka, kafka.poll(max_records=10)[TopicPartition(TOPIC, 0)])
    assert kafka.seeks == [(0, "beginning")]
    assert runner.state.offsets == {}
    assert runner.state.valid == counted_before["valid"]
    while batches := kafka.poll(max_records=10):
        runner.handle_batch(kafka, batches[TopicPartition(TOPIC, 0)])
    assert runner.state.offsets == {0: 15}
    assert runner.state.valid == counted_before["valid"] + one_pass(new_log)["valid"]


def test_a_failed_commit_is_only_logged(tmp_path: Path, caplog) -> None:
    runner = runner_for(tmp_path)
    kafka = FakeConsumer(log_of(10))

    def timeout(*_: Any, **__: Any) -> None:
        raise KafkaTimeoutError("coordinator gone")

    kafka.commit = timeout
    runner.on_assigned(kafka, [TopicPartition(TOPIC, 0)])
    runner.handle_batch(kafka, kafka.poll(max_records=10)[TopicPartition(TOPIC, 0)])
    assert json.loads((tmp_path / "state.json").read_text())["offsets"] == {"0": 10}
    assert "offset commit failed" in caplog.text


def test_run_survives_missing_brokers_and_stops_cleanly(tmp_path: Path, monkeypatch) -> None:
    runner = runner_for(tmp_path)
    errors = []
    runner.broker_errors = type("C", (), {"inc": lambda self: errors.append(1)})()
    log = log_of(40)
    kafka = FakeConsumer(log)
    kafka.stop_after_polls = (8, runner)
    # kafka-python 3 raises KafkaTimeoutError where 2.x raised NoBrokersAvailable.
    no_broker = KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9")
    attempts = iter([no_broker, no_broker, kafka])

    def build(_config: Any) -> FakeConsumer:
        result = next(attempts)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(dc, "build_consumer", build)
    runner.run()
    assert len(errors) == 2
    assert kafka.closed
    assert kafka.committed == {0: 40}
    assert comparable(runner.state) == one_pass(log)


# --------------------------------------------------------------------------- metrics


def scrape(state: dc.DriftState) -> str:
    registry = CollectorRegistry()
    collector = dc.DriftCollector(dc.StateSnapshot.of(fresh_state()))
    registry.register(collector)
    collector.publish(state)
    return generate_latest(registry).decode()


def test_metric_names_and_labels() -> None:
    state = fresh_state()
    dc.process_records(
        state,
        [
            Record(0, 0, b'{"x1": 0.15, "x2": 0.95}'),
            Record(0, 1, b'{"x1": 0.35, "x2": 0.5}'),
            Record(0, 2, b"{}"),
        ],
    )
    text = scrape(state)
    for line in (
        "drift_training_messages_total 2.0",
        'drift_training_invalid_messages_total{reason="missing_feature"} 1.0',
        'drift_training_invalid_messages_total{reason="not_object"} 0.0',
        'drift_training_count{feature="x1"} 2.0',
        'drift_training_mean{feature="x1"} 0.25',
        'drift_training_bucket{feature="x1",le="0.1"} 0.0',
        'drift_training_bucket{feature="x1",le="0.2"} 1.0',
        'drift_training_bucket{feature="x1",le="0.9"} 2.0',
        'drift_training_bucket{feature="x2",le="0.9"} 1.0',
        'drift_training_bucket{feature="x2",le="+Inf"} 2.0',
        'drift_consumer_offset{partition="0",topic="trainingdata"} 3.0',
    ):
        assert line in text.splitlines(), line
    stddev = next(
        x for x in text.splitlines() if x.startswith('drift_training_stddev{feature="x1"}')
    )
    assert float(stddev.split()[-1]) == pytest.approx(math.sqrt(0.02))


def test_metrics_of_an_empty_state_are_zero_counts_and_nan_moments() -> None:
    text = scrape(fresh_state()).splitlines()
    assert "drift_training_messages_total 0.0" in text
    assert 'drift_training_mean{feature="x2"} NaN' in text
    assert 'drift_training_stddev{feature="x2"} NaN' in text
    assert sum(line.startswith("drift_training_invalid_messages_total{") for line in text) == 6


# --------------------------------------------------------------------------- configuration


def test_configuration_defaults() -> None:
    config = dc.ConsumerConfig.from_env({})
    assert config.topic == "trainingdata"
    assert config.features == FEATURES
    assert config.metrics_port == 8000
    assert dict(config.edges) == EDGES
    # A trickle of rows is fetched in one request a second, not one request per row.
    assert (config.fetch_max_wait_ms, config.fetch_min_bytes) == (1000, 65536)


def test_a_fetch_must_end_before_its_request_times_out() -> None:
    env = {"DRIFT_FETCH_MAX_WAIT_MS": "1000", "DRIFT_REQUEST_TIMEOUT_MS": "1000"}
    with pytest.raises(ConfigError, match=r"DRIFT_REQUEST_TIMEOUT_MS \(1000\) must be above"):
        dc.ConsumerConfig.from_env(env)
    env["DRIFT_FETCH_MAX_WAIT_MS"] = "999"
    assert dc.ConsumerConfig.from_env(env).fetch_max_wait_ms == 999


KAFKA_SETTINGS = [
    "DRIFT_MAX_POLL_INTERVAL_MS",
    "DRIFT_SESSION_TIMEOUT_MS",
    "DRIFT_MAX_POLL_RECORDS",
    "DRIFT_REQUEST_TIMEOUT_MS",
    "DRIFT_FETCH_MAX_WAIT_MS",
    "DRIFT_FETCH_MIN_BYTES",
]


@pytest.mark.parametrize("name", KAFKA_SETTINGS)
@given(value=st.integers(min_value=2**31, max_value=2**70))
def test_kafka_settings_beyond_32_bits_are_refused_by_name(name: str, value: int) -> None:
    """kafka-python sends them as 32-bit fields: a larger one failed every request."""
    with pytest.raises(ConfigError, match=f"{name} must be <= {2**31 - 1}"):
        dc.ConsumerConfig.from_env({name: str(value)})


@given(port=st.integers(min_value=65536, max_value=2**40))
def test_metrics_ports_beyond_65535_are_refused(port: int) -> None:
    with pytest.raises(ConfigError, match="DRIFT_METRICS_PORT must be <= 65535"):
        dc.ConsumerConfig.from_env({"DRIFT_METRICS_PORT": str(port)})
    with pytest.raises(ConfigError, match="DRIFT_PRODUCER_METRICS_PORT must be <= 65535"):
        ProducerConfig.from_env({"DRIFT_PRODUCER_METRICS_PORT": str(port)})


def test_bucket_edges_from_json() -> None:
    assert bucket_edges("[0, 1]", FEATURES) == {"x1": (0.0, 1.0), "x2": (0.0, 1.0)}
    assert bucket_edges('{"x2": [1, 2]}', FEATURES) == {"x1": DEFAULT_EDGES, "x2": (1.0, 2.0)}
    for bad in ("{", '{"x3": [1]}', "[2, 1]", '["a"]', "[true]", "3", "[]"):
        with pytest.raises(ConfigError):
            bucket_edges(bad, FEATURES)


@pytest.mark.parametrize(
    "env",
    [
        {"DRIFT_METRICS_PORT": "http"},
        {"DRIFT_FEATURES": "x1,,x2"},
        {"DRIFT_FEATURES": "x1,x1"},
        {"DRIFT_BUCKET_EDGES": "[0.3, 0.1]"},
        {"DRIFT_BACKOFF_MAX_S": "nan"},
        {"DRIFT_FETCH_MIN_BYTES": "0"},
        {"DRIFT_FETCH_MAX_WAIT_MS": "30000"},
    ],
)
def test_bad_configuration_exits_2(env: dict[str, str]) -> None:
    assert dc.main(env) == 2


# --------------------------------------------------------------------------- producer


def test_producer_rows_follow_the_configured_distribution_and_parse() -> None:
    config = ProducerConfig.from_env({"DRIFT_MEANS": "1.0,-2.0", "DRIFT_STDDEVS": "0.5,0.1"})
    rng = random.Random(3)
    rows = [dc.parse_row(make_message(config, rng)[0], FEATURES) for _ in range(20_000)]
    for index, (mean, sd) in enumerate([(1.0, 0.5), (-2.0, 0.1)]):
        values = [row[index] for row in rows]
        got_mean = sum(values) / len(values)
        got_sd = math.sqrt(sum((v - got_mean) ** 2 for v in values) / (len(values) - 1))
        assert got_mean == pytest.approx(mean, abs=4 * sd / math.sqrt(len(values)))
        assert got_sd == pytest.approx(sd, rel=0.03)


def test_producer_invalid_share_and_seed() -> None:
    config = ProducerConfig.from_env({"DRIFT_INVALID_SHARE": "0.25", "DRIFT_SEED": "7"})
    one, two = random.Random(config.seed), random.Random(7)
    assert [make_message(config, one) for _ in range(50)] == [
        make_message(config, two) for _ in range(50)
    ]
    rng = random.Random(config.seed)
    reasons = [make_message(config, rng)[1] for _ in range(4000)]
    invalid = sum(reason is not None for reason in reasons)
    assert 850 < invalid < 1150
    assert ProducerConfig.from_env({}).invalid_share == 0.0


@pytest.mark.parametrize(
    "env",
    [
        {"DRIFT_MEANS": "0.5"},
        {"DRIFT_STDDEVS": "0.2,0"},
        {"DRIFT_INVALID_SHARE": "1.5"},
        {"DRIFT_RATE": "-1"},
        {"DRIFT_MAX_MESSAGES": "many"},
        {"DRIFT_SEED": "x"},
    ],
)
def test_bad_producer_configuration_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        ProducerConfig.from_env(env)


def test_tally_summary() -> None:
    tally = Tally()
    tally.acked(None)
    tally.acked("not_json")
    tally.acked("not_json")
    tally.failed_send(RuntimeError("x"))
    assert tally.summary() == {
        "valid": 1,
        "invalid": 2,
        "failed": 1,
        "invalid_by_reason": {"not_json": 2},
    }


def test_tally_is_stalled_only_when_sends_fail_without_any_ack() -> None:
    tally = Tally()
    start = tally.last_ack
    assert not tally.stalled(60, now=start + 120)  # nothing failed: merely idle
    tally.failed_send(RuntimeError("x"))
    assert not tally.stalled(60, now=start + 30)
    assert tally.stalled(60, now=start + 61)
    tally.acked(None)
    assert not tally.stalled(60, now=tally.last_ack + 61)
