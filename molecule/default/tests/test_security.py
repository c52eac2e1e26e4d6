"""Security defaults: what the host exposes beyond its loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess

# The only port the stack serves beyond the host's loopback: nginx's public port.
PUBLIC_PORTS = {80}
LOOPBACK_ONLY = {8089, 8180, 8181, 8182, 8280, 8281, 8282, 9090, 9092, 9093}
# Ports the stack's containers listen on inside the stack network, never published:
# TorchServe (8080-8082), nginx's stub_status (8081), node and nginx exporters, Grafana,
# the drift consumer's and producer's metrics (8000, 8001).
UNPUBLISHED = {3000, 8000, 8001, 8080, 8081, 8082, 9100, 9113}


def listening(host) -> dict[int, set[str]]:
    """Listening TCP port -> addresses it is bound to, on the host itself."""
    sockets: dict[int, set[str]] = {}
    for line in host.check_output("ss -Htln").splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        sockets.setdefault(int(port), set()).add(address.strip("[]"))
    return sockets


def test_only_nginx_listens_beyond_loopback(host) -> None:
    sockets = listening(host)
    exposed = {port for port, addresses in sockets.items() if addresses - {"127.0.0.1", "::1"}}
    # sshd (22) may exist on a real host; the stack adds nothing but nginx.
    assert exposed - {22} == PUBLIC_PORTS, sockets
    for port in LOOPBACK_ONLY:
        assert sockets.get(port) == {"127.0.0.1"}, (port, sockets.get(port))


def test_management_api_is_not_reachable_through_nginx(host) -> None:
    for path in ("/models", "/predictions/model", "/metrics", "/stub_status"):
        status = host.check_output(
            f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1{path}"
        )
        assert status == "404", (path, status)


def test_containers_have_memory_limits_and_read_only_config(host) -> None:
    for name in (
        "torchserve-blue",
        "torchserve-green",
        "nginx",
        "prometheus",
        "locust",
        "kafka",
        "drift-consumer",
    ):
        info = json.loads(host.check_output(f"docker inspect {name}"))[0]
        assert info["HostConfig"]["Memory"] > 0, name
        config_mounts = [m for m in info["Mounts"] if "/opt/modelserve" in m["Source"]]
        writable = [m["Destination"] for m in config_mounts if m["RW"]]
        assert writable in ([], ["/prometheus"]), (name, writable)
    torchserve = json.loads(host.check_output("docker inspect torchserve-green"))[0]
    assert torchserve["Config"]["User"] in ("model-server", "1000")


def test_nginx_limits_bodies_and_rate(host) -> None:
    config = host.file("/opt/modelserve/nginx/conf.d/modelserve.conf").content_string
    assert "client_max_body_size 16k;" in config
    assert "limit_req zone=predict" in config
    assert "proxy_read_timeout" in config


def instance_address() -> str:
    """The VM's address on this machine's Docker bridge: how a neighbour sees it."""
    name = os.environ.get("MODELSERVE_INSTANCE", "modelserve-vm")
    output = subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return output.split()[0]


def accepts(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((address, port)) == 0


def test_from_outside_only_nginx_answers() -> None:
    # One TCP connect per port, from the Molecule host to the test instance: what a
    # neighbour on the network reaches. Everything but nginx must refuse.
    address = instance_address()
    reachable = {
        port
        for port in sorted(PUBLIC_PORTS | LOOPBACK_ONLY | UNPUBLISHED)
        if accepts(address, port)
    }
    print(f"from outside, {address} accepts {sorted(reachable)}")
    assert reachable == PUBLIC_PORTS
