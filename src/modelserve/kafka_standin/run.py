#!/usr/bin/python3
"""Start Tansu with the settings the official image reads from KAFKA_* variables.

Only what has a Tansu equivalent is honoured: the client listener (the one named by
KAFKA_INTER_BROKER_LISTENER_NAME, else the first that is not a controller listener),
its advertised address, and CLUSTER_ID. KRaft's controller settings have no meaning for
a single Tansu process and are ignored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TANSU = "/opt/kafka/tansu"


def listeners(text: str) -> dict[str, tuple[str, str]]:
    """``NAME://host:port,...`` as {NAME: (host, port)}."""
    result: dict[str, tuple[str, str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, address = entry.partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, port)
    return result


def tansu_argv(env: Mapping[str, str]) -> list[str]:
    """Tansu's command line for the official image's KAFKA_* settings."""
    controllers = set(env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER").split(","))
    bind = listeners(env.get("KAFKA_LISTENERS", "PLAINTEXT://:9092"))
    name = env.get("KAFKA_INTER_BROKER_LISTENER_NAME") or next(
        n for n in bind if n not in controllers
    )
    host, port = bind[name]
    advertised = listeners(env.get("KAFKA_ADVERTISED_LISTENERS", "")).get(name)
    advertised_host, advertised_port = advertised or ("localhost", port)
    return [
        TANSU,
        "broker",
        "--listener-url",
        f"tcp://{host or '0.0.0.0'}:{port}",
        "--advertised-listener-url",
        f"tcp://{advertised_host or 'localhost'}:{advertised_port}",
        "--cluster-id",
        env.get("CLUSTER_ID", "tansu_cluster"),
        "--storage-engine",
        env.get("STORAGE_ENGINE", "memory://tansu/"),
    ]


def main() -> None:
    argv = tansu_argv(os.environ)
    print("run:", " ".join(argv), flush=True)
    os.execv(TANSU, argv)  # Tansu becomes PID 1 and gets docker stop's SIGTERM


if __name__ == "__main__":
    sys.exit(main())
