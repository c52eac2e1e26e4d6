"""The docker role: engine running, stack network, offline images loaded."""

from __future__ import annotations

import json

import pytest

STACK_IMAGES = ("modelserve-local/torchserve:0.12.0-cpu", "modelserve-local/nginx:1.27")


def test_docker_engine_is_running(host) -> None:
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    assert host.run("docker info --format '{{.ServerVersion}}'").rc == 0


def test_daemon_rotates_container_logs(host) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"]["max-size"]
    info = host.check_output("docker info --format '{{.LoggingDriver}}'")
    assert info == "json-file"


def test_stack_network_exists(host) -> None:
    network = json.loads(host.check_output("docker network inspect modelserve"))[0]
    assert network["Driver"] == "bridge"
    members = {c["Name"] for c in network["Containers"].values()}
    assert {"torchserve-blue", "torchserve-green", "nginx"} <= members


@pytest.mark.parametrize("image", STACK_IMAGES)
def test_offline_images_are_loaded(host, image: str) -> None:
    assert host.run(f"docker image inspect {image}").rc == 0
