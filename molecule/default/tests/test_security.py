"""Security defaults: what the host exposes beyond its loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from conftest import run_ansible

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


RATE_TEST_DIR = "/tmp/modelserve-rate-limit-test"
RATE_TEST_CONTAINER = "nginx-rate-limit-test"
RATE_TEST_PORT = 18099
TEMPLATE = "roles/nginx/templates/modelserve.conf.j2"


def test_rate_limit_answers_429_beyond_the_rate(host) -> None:
    """The role's server config rendered with 5 req/s and no burst, in a throwaway nginx
    beside the live one (same image, nginx.conf and upstreams, on the VM's loopback): of 30
    requests sent back to back, the first is answered by the model and most of the rest
    get nginx's JSON 429."""
    host.run(f"docker rm -f {RATE_TEST_CONTAINER}; rm -rf {RATE_TEST_DIR}")
    host.check_output(f"mkdir -p {RATE_TEST_DIR}/conf.d")
    host.check_output(f"cp /opt/modelserve/nginx/conf.d/upstreams.conf {RATE_TEST_DIR}/conf.d/")
    rendered = run_ansible(
        "ansible", "modelserve", "-m", "ansible.builtin.template",
        "-a", f"src={TEMPLATE} dest={RATE_TEST_DIR}/conf.d/modelserve.conf",
        "-e", "@roles/nginx/defaults/main.yml", "-e", "@roles/nginx/vars/main.yml",
        "-e", "nginx_rate_limit_per_second=5", "-e", "nginx_rate_limit_burst=0", timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.output
    image = host.check_output("docker inspect -f '{{.Config.Image}}' nginx")
    try:
        host.check_output(
            f"docker run -d --name {RATE_TEST_CONTAINER} --network modelserve"
            f" -p 127.0.0.1:{RATE_TEST_PORT}:80"
            f" -v /opt/modelserve/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"
            f" -v {RATE_TEST_DIR}/conf.d:/etc/nginx/conf.d:ro {image}"
        )
        url = f"http://127.0.0.1:{RATE_TEST_PORT}"
        host.check_output(f"timeout 30 sh -c 'until curl -sf {url}/healthz; do sleep 0.5; done'")
        time.sleep(1)  # a full token for the first request
        codes = host.check_output(
            "for i in $(seq 30); do curl -s -o "
            f"{RATE_TEST_DIR}/answer.$i -w '%{{http_code}} ' -X POST"
            f" -H 'Content-Type: application/json' -d '{{\"data\": [0.2, 0.6]}}' {url}/predict;"
            " done"
        ).split()
        first_limited = codes.index("429") + 1 if "429" in codes else 1
        limited_body = host.check_output(f"cat {RATE_TEST_DIR}/answer.{first_limited}")
    finally:
        host.run(f"docker rm -f {RATE_TEST_CONTAINER}; rm -rf {RATE_TEST_DIR}")
    assert codes[0] == "200", codes
    assert set(codes) <= {"200", "429"}, codes
    assert codes.count("429") >= 20, codes
    assert json.loads(limited_body) == {"error": "too many requests"}


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
