"""Security defaults: what the host exposes beyond its loopback."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shlex
import socket
import subprocess
import time

import pytest
import requests
from conftest import (
    COLOURS,
    CONTRACT,
    active_colour,
    colour_container,
    colour_port,
    colour_socket,
    idle_colour,
    predict,
    run_ansible,
    torchserve_key,
)

# The only ports the stack serves beyond the host's loopback: nginx's HTTP and HTTPS.
PUBLIC_PORTS = {80, 443}
# On the VM's loopback: the UIs (Locust, Prometheus, Alertmanager) and TorchServe's
# management APIs (which need their keys even there). Its inference API has no port.
LOOPBACK_ONLY = {8089, 9090, 9093} | {colour_port(colour, "management") for colour in COLOURS}
# Ports the stack's containers listen on inside the stack network, never published:
# TorchServe (8081-8082; 8080 nowhere), nginx's stub_status (8081), node and nginx
# exporters, Grafana, the drift consumer's and producer's metrics (8000, 8001), Kafka
# (9092, no authentication), TorchServe's metrics (their host ports unless asked for).
UNPUBLISHED = {3000, 8000, 8001, 8080, 8081, 8082, 9092, 9100, 9113} | {
    colour_port(colour, "metrics") for colour in COLOURS
}
# The stack network (the bluegreen role's contract).
NETWORK: str = CONTRACT["bluegreen_network_name"]


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
    # Not on any of the VM's interfaces, loopback included: Kafka above all.
    assert not UNPUBLISHED & sockets.keys(), sockets


def test_kafka_is_not_reachable_on_the_vm_interfaces(host) -> None:
    addresses = ["127.0.0.1", *host.check_output("hostname -I").split()]
    for address in addresses:
        refused = host.run(f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/9092'")
        assert refused.rc != 0, f"Kafka accepts connections on {address}:9092"
    # It serves the stack network, where the drift consumer reads from it.
    assert neighbour(host, "bash -c 'exec 3<>/dev/tcp/kafka/9092'").rc == 0


def neighbour(host, command: str):
    """Run a shell command in a throwaway container on the stack network (the nginx image,
    which has bash and curl): what any other container there can do."""
    image = host.check_output("docker inspect -f '{{.Config.Image}}' nginx")
    return host.run(
        f"docker run --rm --network {NETWORK} --entrypoint sh {image} -c {shlex.quote(command)}"
    )


def status_of(
    host, where: str, method: str, url: str, key: str = "", socket: str = ""
) -> tuple[int, str]:
    """HTTP status and body of one request, sent from the VM ("host") or from a container
    on the stack network ("stack"), with an API key or none, over a Unix socket or TCP."""
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    via = f"--unix-socket '{socket}'" if socket else ""
    command = f"curl -s -w '\\n%{{http_code}}' -X {method} {auth} {via} '{url}'"
    result = host.run(command) if where == "host" else neighbour(host, command)
    assert result.rc == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def refused_for_its_key(answer: tuple[int, str]) -> bool:
    """TorchServe 0.12 answers a missing or wrong key with 400 and an InvalidKeyException
    (not 401/403); nothing else answers that."""
    code, body = answer
    return code in (400, 401, 403) and "InvalidKeyException" in body


def management_url(where: str, colour: str) -> str:
    if where == "host":
        return f"http://127.0.0.1:{colour_port(colour, 'management')}"
    return f"http://{colour_container(colour)}:8081"


@pytest.mark.parametrize("where", ["host", "stack"])
def test_management_api_needs_its_key(host, where: str) -> None:
    """From the VM's loopback and from another container on the stack network, each
    colour's management API refuses a call without its key, or with the other colour's,
    and answers it with its own."""
    for colour in COLOURS:
        url = f"{management_url(where, colour)}/models"
        key = torchserve_key(host, colour)
        other = torchserve_key(host, next(c for c in COLOURS if c != colour))
        assert refused_for_its_key(status_of(host, where, "GET", url)), (colour, where)
        assert refused_for_its_key(status_of(host, where, "GET", url, key=other)), colour
        code, body = status_of(host, where, "GET", url, key=key)
        assert code == 200, (colour, where, body)
        assert json.loads(body)["models"][0]["modelName"] == "model"


@pytest.mark.parametrize("colour", COLOURS)
def test_inference_api_needs_its_key(host, colour: str) -> None:
    """TorchServe's own inference API, on its socket on the host, too: only nginx, which
    holds the key, serves clients without one."""
    url, socket = "http://localhost/ping", colour_socket(colour)
    assert refused_for_its_key(status_of(host, "host", "GET", url, socket=socket))
    key = torchserve_key(host, colour, "inference")
    assert status_of(host, "host", "GET", url, key=key, socket=socket)[0] == 200


@pytest.mark.parametrize("colour", COLOURS)
def test_inference_api_is_on_no_network(host, colour: str) -> None:
    """No port of a colour serves inference: a container on the stack network cannot
    connect to TorchServe's inference port, and the host publishes none."""
    container = colour_container(colour)
    reached = neighbour(host, f"curl -s -o /dev/null --max-time 5 http://{container}:8080/ping")
    assert reached.rc == 7, (reached.rc, reached.stdout, reached.stderr)  # could not connect
    published = host.check_output(f"docker port {container}")
    assert "8080/tcp" not in published, published


@pytest.mark.parametrize("where", ["host", "stack"])
def test_no_model_is_registered_from_a_url(host, where: str) -> None:
    """allowed_urls admits the model store only: a model offered from a URL is refused,
    with the management key too, and nothing is registered."""
    colour = idle_colour(active_colour(host))
    key = torchserve_key(host, colour)
    base = management_url(where, colour)
    for offered in (
        "http://nginx/model.mar",
        "https://example.com/model.mar",
        "file:///etc/passwd",
    ):
        url = f"{base}/models?url={offered}&model_name=intruder&initial_workers=1&synchronous=true"
        assert refused_for_its_key(status_of(host, where, "POST", url)), offered
        code, body = status_of(host, where, "POST", url, key=key)
        assert 400 <= code < 500 and "does not match any allowed URL" in body, (offered, body)
    code, body = status_of(host, where, "GET", f"{base}/models", key=key)
    assert [m["modelName"] for m in json.loads(body)["models"]] == ["model"], body


@pytest.mark.parametrize("where", ["host", "stack"])
def test_production_cannot_be_unregistered_without_the_key(host, where: str) -> None:
    colour = active_colour(host)
    base = management_url(where, colour)
    key = torchserve_key(host, colour)
    versions = json.loads(status_of(host, where, "GET", f"{base}/models/model/all", key=key)[1])
    for version in [v["modelVersion"] for v in versions]:
        answer = status_of(host, where, "DELETE", f"{base}/models/model/{version}")
        assert refused_for_its_key(answer), (version, answer)
    answer = status_of(host, where, "DELETE", f"{base}/models/model")
    assert refused_for_its_key(answer), answer
    assert (
        json.loads(status_of(host, where, "GET", f"{base}/models/model/all", key=key)[1])
        == versions
    )
    answer = predict("/predict")
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Colour"] == colour


def test_management_api_is_not_reachable_through_nginx(host) -> None:
    for path in ("/models", "/predictions/model", "/metrics", "/stub_status"):
        status = host.check_output(
            f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1{path}"
        )
        assert status == "404", (path, status)


def test_containers_have_memory_limits_and_read_only_config(host) -> None:
    for name in (
        *map(colour_container, COLOURS),
        "nginx",
        "prometheus",
        "locust",
        "kafka",
        "drift-consumer",
    ):
        info = json.loads(host.check_output(f"docker inspect {name}"))[0]
        assert info["HostConfig"]["Memory"] > 0, name
        config_mounts = [m for m in info["Mounts"] if "/opt/modelserve" in m["Source"]]
        # Docker lists a container's mounts in no fixed order.
        writable = sorted(m["Destination"] for m in config_mounts if m["RW"])
        # Prometheus's data; TorchServe's working directory, where it writes its keys, and
        # its inference socket's directory.
        torchserve = ["/home/model-server/keys", "/home/model-server/socket"]
        assert writable in ([], ["/prometheus"], torchserve), (name, writable)
    torchserve = json.loads(host.check_output(f"docker inspect {colour_container(COLOURS[-1])}"))[0]
    assert torchserve["Config"]["User"] in ("model-server", "1000")


def test_nginx_limits_bodies_and_rate(host) -> None:
    config = host.file("/opt/modelserve/nginx/conf.d/modelserve.conf").content_string
    assert "client_max_body_size 16k;" in config
    assert "limit_req zone=predict_per_client" in config
    assert "proxy_read_timeout" in config


RATE_TEST_DIR = "/tmp/modelserve-rate-limit-test"
RATE_TEST_CONTAINER = "nginx-rate-limit-test"
RATE_TEST_PORT = 18099
TEMPLATE = "roles/nginx/templates/modelserve.conf.j2"
# Clients of the rate-limit test on the stack network (.250 and .251 of its subnet): a
# trusted load generator, and a trusted proxy (a load balancer) with clients behind it.
SUBNET = ipaddress.ip_network(CONTRACT["bluegreen_network_subnet"])
TRUSTED_CLIENT = str(SUBNET[250])
TRUSTED_PROXY = str(SUBNET[251])
# 30 POSTs of the reference input back to back; prints their status codes (and keeps
# the bodies in $OUT when set). Arguments: the base URL, then the client addresses a
# proxy reports (X-Forwarded-For), in turn.
POST_30 = """\
url=$1; shift
for i in $(seq 30); do
  if [ $# -gt 0 ]; then xff=$1; shift; set -- "$@" "$xff"; else xff=none; fi
  out=/dev/null; [ -n "$OUT" ] && out=$OUT/answer.$i
  curl -s -o "$out" -w '%{http_code} ' -X POST -H "X-Forwarded-For: $xff" \
    -H 'Content-Type: application/json' -d '{"data": [0.2, 0.6]}' "$url/predict"
done
"""


def post_30(host, *forwarded_for: str, client: str = "") -> list[str]:
    """Status codes of 30 requests to the test nginx: from the VM itself (through Docker's
    port forward), or from a container at `client` on the stack network."""
    if not client:
        url = f"http://127.0.0.1:{RATE_TEST_PORT}"
        return host.check_output(f"OUT={RATE_TEST_DIR} sh {RATE_TEST_DIR}/post.sh {url}").split()
    image = host.check_output("docker inspect -f '{{.Config.Image}}' nginx")
    return host.check_output(
        f"docker run --rm --network {NETWORK} --ip {client} -v {RATE_TEST_DIR}:/t:ro"
        f" --entrypoint sh {image} /t/post.sh http://{RATE_TEST_CONTAINER} "
        + " ".join(forwarded_for)
    ).split()


def test_rate_limit_answers_429_beyond_the_rate(host) -> None:
    """The role's server config rendered with 1 req/s and no burst, a trusted load
    generator and a trusted proxy, in a throwaway nginx beside the live one (same image,
    nginx.conf, upstreams and keys, on the stack network). Of 30 requests sent back to back:
    from an untrusted address (the VM), the first is answered by the model and most of the
    rest get nginx's JSON 429; from the trusted load generator, all are answered; through
    the trusted proxy, two clients taking turns are each limited by their own address
    (each one's first request answered, most of the rest 429), not by the proxy's."""
    host.run(f"docker rm -f {RATE_TEST_CONTAINER}; rm -rf {RATE_TEST_DIR}")
    host.check_output(f"mkdir -p {RATE_TEST_DIR}/conf.d")
    host.check_output(
        f"cp /opt/modelserve/nginx/conf.d/upstreams.conf"
        f" /opt/modelserve/nginx/conf.d/torchserve-keys.conf {RATE_TEST_DIR}/conf.d/"
    )
    encoded = base64.b64encode(POST_30.encode()).decode()
    host.check_output(f"echo {encoded} | base64 -d > {RATE_TEST_DIR}/post.sh")
    trusted = json.dumps(
        {
            "nginx_rate_limit_exempt": [f"{TRUSTED_CLIENT}/32", f"{TRUSTED_PROXY}/32"],
            "nginx_real_ip_from": [f"{TRUSTED_PROXY}/32"],
        }
    )
    rendered = run_ansible(
        "ansible", "modelserve", "-b", "-m", "ansible.builtin.template",
        "-a", f"src={TEMPLATE} dest={RATE_TEST_DIR}/conf.d/modelserve.conf",
        "-e", "@roles/bluegreen/defaults/main.yml", "-e", "@roles/bluegreen/vars/main.yml",
        "-e", "@roles/nginx/defaults/main.yml", "-e", "@roles/nginx/vars/main.yml",
        "-e", "nginx_rate_limit_per_second=1", "-e", "nginx_rate_limit_burst=0",
        # The throwaway nginx has no certificates: the server as on a host without HTTPS.
        "-e", '{"__nginx_serves_tls": false}',
        "-e", trusted, timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.output
    image = host.check_output("docker inspect -f '{{.Config.Image}}' nginx")
    try:
        host.check_output(
            f"docker run -d --name {RATE_TEST_CONTAINER} --network {NETWORK}"
            f" -p 127.0.0.1:{RATE_TEST_PORT}:80"
            f" -v /opt/modelserve/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"
            f" -v /opt/modelserve/nginx/tls:/etc/nginx/tls:ro"
            # The colours' inference sockets are in nginx's state directory.
            f" -v /opt/modelserve/nginx/state:/etc/nginx/state:ro"
            f" -v {RATE_TEST_DIR}/conf.d:/etc/nginx/conf.d:ro {image}"
        )
        url = f"http://127.0.0.1:{RATE_TEST_PORT}"
        host.check_output(f"timeout 30 sh -c 'until curl -sf {url}/healthz; do sleep 0.5; done'")
        time.sleep(1)  # a full token for the first request
        codes = post_30(host)
        first_limited = codes.index("429") + 1 if "429" in codes else 1
        limited_body = host.check_output(f"cat {RATE_TEST_DIR}/answer.{first_limited}")
        trusted_codes = post_30(host, client=TRUSTED_CLIENT)
        behind_proxy = post_30(host, "203.0.113.7", "203.0.113.8", client=TRUSTED_PROXY)
    finally:
        host.run(f"docker rm -f {RATE_TEST_CONTAINER}; rm -rf {RATE_TEST_DIR}")
    print(f"untrusted: {codes}\ntrusted: {trusted_codes}\nbehind the proxy: {behind_proxy}")
    assert codes[0] == "200", codes
    assert set(codes) <= {"200", "429"}, codes
    assert codes.count("429") >= 20, codes
    assert json.loads(limited_body) == {"error": "too many requests"}
    assert trusted_codes == ["200"] * 30, trusted_codes
    # Limited by the proxy's address, the second client's first request would be a 429.
    assert behind_proxy[:2] == ["200", "200"], behind_proxy
    assert set(behind_proxy) <= {"200", "429"}, behind_proxy
    assert behind_proxy.count("429") >= 20, behind_proxy


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


def test_nginx_gets_a_restarted_colour_new_key(host) -> None:
    """TorchServe draws new keys at each start. The idle colour restarted for real: its
    key changes, nginx is given the new one (systemd path unit) and /test/predict answers
    again, while production keeps answering every request meanwhile."""
    colour = idle_colour(active_colour(host))
    before = torchserve_key(host, colour, "inference")
    failures: list[int] = []
    host.check_output(f"docker restart {colour_container(colour)}")
    started = time.monotonic()
    recovered = None
    with requests.Session() as session:
        while time.monotonic() - started < 120:
            production = predict("/predict", session=session)
            if production.status_code != 200:
                failures.append(production.status_code)
            if predict("/test/predict", session=session).status_code == 200:
                recovered = time.monotonic() - started
                break
            time.sleep(0.2)
    after = torchserve_key(host, colour, "inference")
    keys_conf = host.file("/opt/modelserve/nginx/conf.d/torchserve-keys.conf")
    print(f"/test/predict answered again {recovered} s after the restart")
    assert after != before
    assert f'{colour} "{after}";' in keys_conf.content_string
    assert keys_conf.mode == 0o600
    assert recovered is not None, "the restarted colour never answered through nginx"
    assert failures == [], failures
