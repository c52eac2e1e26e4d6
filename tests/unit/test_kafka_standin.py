"""The Kafka stand-in's entrypoint maps the official image's KAFKA_* settings to Tansu."""

from __future__ import annotations

from modelserve.kafka_standin import run


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_kraft_settings_of_the_role() -> None:
    argv = run.tansu_argv(
        {
            "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
            "CLUSTER_ID": "bW9kZWxzZXJ2ZWRyaWZ0MA",
        }
    )
    assert option(argv, "--listener-url") == "tcp://0.0.0.0:9092"
    assert option(argv, "--advertised-listener-url") == "tcp://kafka:9092"
    assert option(argv, "--cluster-id") == "bW9kZWxzZXJ2ZWRyaWZ0MA"
    assert option(argv, "--storage-engine") == "memory://tansu/"


def test_controller_listener_is_never_served_to_clients() -> None:
    argv = run.tansu_argv({"KAFKA_LISTENERS": "CONTROLLER://:9093,CLIENT://127.0.0.1:19092"})
    assert option(argv, "--listener-url") == "tcp://127.0.0.1:19092"
    assert option(argv, "--advertised-listener-url") == "tcp://localhost:19092"
