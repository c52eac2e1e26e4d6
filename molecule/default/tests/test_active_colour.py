"""The active-colour fact cannot lie: a damaged fact stops converge and swap instead of
routing production to the default colour, and the fact changes only once nginx has
reloaded on the new routing. Each case damages the VM for real and restores it."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import FACT_FILE, active_colour, idle_colour, predict, run_ansible, run_playbook

UPSTREAMS = "/opt/modelserve/nginx/conf.d/upstreams.conf"
SERVER = "/opt/modelserve/nginx/conf.d/modelserve.conf"
SERVER_SAVED = "/tmp/modelserve.conf.saved"
DRAIN_FLAG = "/opt/modelserve/nginx/state/drain"
# The stand-in's and the official image's, read by `nginx -t` and on a reload only: the
# config validator tests candidates in a fresh container, the live container keeps this.
MIME_TYPES = "/etc/nginx/mime.types"


def write(host, path: str, content: str) -> None:
    encoded = base64.b64encode(content.encode()).decode()
    assert host.run(f"echo {encoded} | base64 -d > {path}").rc == 0


def flat(text: str) -> str:
    """Ansible's output with its line wrapping and JSON quoting undone."""
    return " ".join(text.split()).replace('\\"', '"')


def state(host) -> tuple[str, str]:
    return host.file(FACT_FILE).content_string, host.file(UPSTREAMS).content_string


def leftovers(host) -> list[str]:
    """Copies of an earlier routing left in conf.d, and a drain flag left on."""
    found = host.run(f"ls /opt/modelserve/nginx/conf.d/ {DRAIN_FLAG}").stdout.split()
    return [name for name in found if name.endswith("~") or name == DRAIN_FLAG]


def serving_colour(timeout: float = 60) -> str:
    """The colour answering /predict, once nginx answers again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = predict("/predict", timeout=5)
            if response.status_code == 200:
                return response.headers["X-Model-Colour"]
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"/predict not answered within {timeout:.0f} s"
        time.sleep(1)


@pytest.fixture
def kept_state(host) -> Iterator[tuple[str, str]]:
    """The fact, the routing and the colour in production; put back afterwards whatever
    the test (or the code under test) did to them."""
    before = state(host)
    production = active_colour(host)
    yield before
    host.run(f"docker start nginx; docker exec nginx cp /tmp/mime.types.saved {MIME_TYPES}")
    host.run(f"test -f {SERVER_SAVED} && mv {SERVER_SAVED} {SERVER}")
    write(host, FACT_FILE, before[0])
    if state(host) != before or serving_colour() != production:
        restored = run_playbook("swap.yml", "-e", f"target={production}")
        assert restored.returncode == 0, restored.output


DAMAGED = {
    "empty": "",
    "unparseable": '{"active_colour": "blue"',
    "unknown colour": '{"active_colour": "purple"}\n',
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_fact_stops_swap_and_converge(
    host, kept_state: tuple[str, str], damage: str
) -> None:
    production = active_colour(host)
    write(host, FACT_FILE, DAMAGED[damage])
    damaged = state(host)
    runs = {
        "swap.yml": run_playbook("swap.yml"),
        # The nginx role as site.yml runs it (the roles before it take minutes here).
        "nginx role": run_ansible(
            "ansible", "modelserve", "-b", "-m", "ansible.builtin.include_role", "-a", "name=nginx"
        ),
    }
    for name, run in runs.items():
        assert run.returncode != 0, f"{name} ran on a damaged fact:\n{run.output[-3000:]}"
        assert f"{FACT_FILE} is damaged" in flat(run.output), run.output[-3000:]
        # What to do: the colour nginx routes production to, written back.
        assert f'echo \'{{"active_colour": "{production}"}}\' > {FACT_FILE}' in flat(run.output)
        assert state(host) == damaged, f"{name} changed the fact or the routing"
    assert serving_colour() == production
    status = run_playbook("status.yml")
    assert status.returncode == 0, status.output
    assert f"production: UNKNOWN ({FACT_FILE} is damaged" in flat(status.output)


def break_live_config(host) -> None:
    """Something only the live container reads: a reload would fail."""
    cmd = f"cp {MIME_TYPES} /tmp/mime.types.saved && echo 'types {{' > {MIME_TYPES}"
    assert host.run(f'docker exec nginx sh -c "{cmd}"').rc == 0
    assert host.run("docker exec nginx nginx -t").rc != 0


def stop_nginx(host) -> None:
    assert host.run("docker stop nginx").rc == 0


def change_a_zone_key(host) -> None:
    """A config that tests fine but that the running master refuses on a reload (it keeps
    the old one and `nginx -s reload` still exits 0): a rate-limit zone with another key."""
    assert host.run(f"cp {SERVER} {SERVER_SAVED}").rc == 0
    edit = r"s/^limit_req_zone \$rate_limit_key /limit_req_zone $binary_remote_addr /"
    assert host.run(f"sed -i '{edit}' {SERVER}").rc == 0
    assert "limit_req_zone $binary_remote_addr" in host.file(SERVER).content_string
    assert host.run("docker exec nginx nginx -t").rc == 0


@pytest.mark.parametrize(
    "fault",
    [break_live_config, stop_nginx, change_a_zone_key],
    ids=["nginx -t fails", "nginx down", "nginx refuses the reload"],
)
def test_a_failed_reload_leaves_fact_and_routing_on_the_old_colour(
    host, kept_state: tuple[str, str], fault
) -> None:
    production = active_colour(host)
    fault(host)
    swap = run_playbook("swap.yml", "-e", f"target={idle_colour(production)}")
    assert swap.returncode != 0, swap.output
    assert f"production stays on {production}" in flat(swap.output), swap.output[-3000:]
    assert state(host) == kept_state
    assert leftovers(host) == []
    host.run(f"docker start nginx; docker exec nginx cp /tmp/mime.types.saved {MIME_TYPES}")
    assert serving_colour() == production
