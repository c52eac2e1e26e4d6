"""A reboot brings back the whole stack: the VM restarted (`docker restart` of the VM's
container: systemd stops the inner Docker and starts it again on boot), and only the VM's
Docker daemon restarted.

Before each, the stack runs with the non-default colour in production and the
Prometheus and Alertmanager reload handlers have just run, as a converge that changed
their config runs them (the handlers once used `docker kill --signal=HUP`, which Docker
records as a manual stop, so that `unless-stopped` left Prometheus and Alertmanager down
after a reboot). After each:
every container runs again, /predict is answered by the same colour, every Prometheus
target is up, every rule group has been evaluated since, and the drift consumer resumed
from its state without counting a message twice. A record of changes production's restart
waited for is dropped by the next converge of the torchserve role, which restarts nothing
for it: the restart applied them. `pytest -s` prints the times.

This file runs after the drift tests on purpose: the test VM's Kafka stand-in keeps its
topic in memory, and a reboot empties it (see the drift check below).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from conftest import (
    COLOURS,
    CONTRACT,
    REPO,
    active_colour,
    colour_container,
    predict,
    run_ansible,
    run_playbook,
)
from test_drift import (
    CONSUMER,
    SIMULATOR,
    api,
    bounded_producer_summary,
    compare,
    counted,
    start_bounded_producer,
    wait_until_settled,
)

VM = os.environ.get("MODELSERVE_INSTANCE", "modelserve-vm")
PROMETHEUS = "http://127.0.0.1:9090"
# Not the colour a first converge makes production (nginx_initial_active_colour).
COLOUR = "blue"
# Bounds of each wait after a reboot; measured here: well under a minute each.
BOOT_TIMEOUT_S = 180
RESUMING = re.compile(r"resuming from \S+: (\d+) valid rows")


@pytest.fixture(scope="module")
def blue_in_production() -> Iterator[None]:
    """The non-default colour in production for the reboots; green again afterwards,
    as the later tests expect."""
    swap = run_playbook("swap.yml", "-e", f"target={COLOUR}")
    assert swap.returncode == 0, swap.output
    yield
    back = run_playbook("swap.yml", "-e", "target=green")
    assert back.returncode == 0, back.output


def wait_until_clear(
    what: str, problems: Callable[[], list[str]], since: float, timeout: float
) -> float:
    """Seconds from ``since`` until ``problems()`` lists none; fails after ``timeout``
    seconds with the last ones seen."""
    last = ["not checked yet"]
    while time.monotonic() - since < timeout:
        try:
            last = problems()
        except (requests.RequestException, AssertionError, ValueError, KeyError) as error:
            last = [repr(error)]
        if not last:
            return time.monotonic() - since
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s of the restart; still: {last}")


def predict_problems() -> list[str]:
    response = predict("/predict", timeout=5)
    return [] if response.status_code == 200 else [f"/predict: {response.status_code}"]


def running_containers(host) -> set[str]:
    result = host.run("docker ps --format '{{.Names}}'")
    return set(result.stdout.split()) if result.rc == 0 else set()


def run_reload_handlers(tmp_path: Path) -> None:
    """The prometheus and alertmanager roles' reload handlers, run for real as a converge
    runs them."""
    playbook = tmp_path / "reload.yml"
    play = {
        "hosts": "modelserve",
        "become": True,
        "gather_facts": False,
        "tasks": [
            {
                "name": "Change nothing, but notify the reload handlers",
                "ansible.builtin.command": "true",
                "changed_when": True,
                "notify": ["Reload prometheus", "Reload alertmanager"],
            }
        ],
        "handlers": [
            {"ansible.builtin.import_tasks": str(REPO / "roles" / role / "handlers/main.yml")}
            for role in ("prometheus", "alertmanager")
        ],
    }
    playbook.write_text(json.dumps([play]))
    result = run_playbook(str(playbook))
    assert result.returncode == 0, result.output


def reloaded_at(host) -> float:
    """When Prometheus last loaded its config (a SIGHUP reload moves it)."""
    query = "prometheus_config_last_reload_success_timestamp_seconds"
    result = api(host, f"{PROMETHEUS}/api/v1/query?query={query}")["data"]["result"]
    return float(result[0]["value"][1])


def targets_down(host) -> list[str]:
    """Scrape URLs not up (a placeholder while Prometheus has no target yet)."""
    targets = api(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
    down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
    return down if targets else ["(no target yet)"]


def rules_not_evaluated_since(host, since_epoch: float) -> list[str]:
    """Rule groups without an evaluation after ``since_epoch``, and rules not healthy."""
    groups = api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    stale = []
    for group in groups:
        evaluated = datetime.fromisoformat(group["lastEvaluation"]).timestamp()
        if evaluated <= since_epoch:
            stale.append(f"group {group['name']} last evaluated {group['lastEvaluation']}")
        stale += [
            f"rule {rule['name']}: {rule['health']} {rule.get('lastError', '')}"
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
    return stale if groups else ["(no rule group)"]


def restart(kind: str, host) -> None:
    if kind == "vm":
        # From this machine: systemd in the VM stops its Docker (containers get their stop
        # signals), then boots and starts it again.
        done = subprocess.run(
            ["docker", "restart", VM], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
    else:
        assert host.run("systemctl restart docker").rc == 0


def booting(host) -> list[str]:
    """Why the VM's systemd is not up yet ("degraded" is up: some units cannot run in a
    container)."""
    result = host.run("systemctl is-system-running --wait")
    state = result.stdout.strip()
    return [] if state in ("running", "degraded") else [state or result.stderr.strip()]


def logs_since(host, container: str, since: float | str, stream: str = "stdout") -> str:
    """A container's log lines since a Unix time or an RFC 3339 timestamp."""
    since = f"{since:.0f}" if isinstance(since, float) else since
    redirect = "2>/dev/null" if stream == "stdout" else "2>&1 >/dev/null"
    return host.run(f"docker logs --since {since} {container} {redirect}").stdout


def check_drift_counted_once(host, rebooted_epoch: float) -> None:
    """Every training message sent since the reboot counted exactly once, on top of the
    statistics the consumer had saved when it was stopped.

    The consumer logs what it resumes from; the simulator (stopped here) prints what the
    broker acknowledged since it started again. The test VM's Kafka stand-in lost its
    topic in the reboot (it keeps data in memory; the real image keeps it on a volume),
    so every message in the new topic is one the simulator sent since: the consumer must
    have counted exactly those on top of its saved statistics. Then a bounded run is
    counted exactly too."""
    assert host.run(f"docker stop {SIMULATOR}").rc == 0
    try:
        resumed = RESUMING.findall(logs_since(host, CONSUMER, rebooted_epoch, "stderr"))
        assert resumed, "the consumer did not resume from its state file after the reboot"
        at_resume = int(resumed[0])
        # Its summary as it was stopped now; the one it printed as the reboot stopped it
        # came before this start.
        started_at = host.check_output(f"docker inspect -f '{{{{.State.StartedAt}}}}' {SIMULATOR}")
        summaries = [
            line for line in logs_since(host, SIMULATOR, started_at).splitlines() if line[:1] == "{"
        ]
        assert len(summaries) == 1, f"not one summary from the simulator since {started_at}"
        sent = json.loads(summaries[0])
        valid_now, _ = wait_until_settled(host)
        print(
            f"drift: consumer resumed at {at_resume} valid rows; simulator since it started"
            f" {sent}; counted since the reboot {valid_now - at_resume}"
        )
        assert sent["failed"] == 0, "sends the broker never acknowledged: no exact count"
        assert valid_now - at_resume == sent["valid"]

        before = counted(host)
        start_bounded_producer(host, messages=200, rate=50, invalid_share=0.1, seed=13)
        produced = bounded_producer_summary(host, timeout=60)
        compare("bounded run after the reboot", before, wait_until_settled(host), produced)
    finally:
        host.run(f"docker start {SIMULATOR}")


def colour_started_at(host, colour: str) -> str:
    return host.check_output(
        "docker inspect -f '{{.State.StartedAt}}' %s", colour_container(colour)
    ).strip()


def write_pending_records(host) -> None:
    """Each colour's record of a change its restart waits for, as a converge writes it
    (roles/torchserve): production's, and one the idle colour would act on."""
    for colour in COLOURS:
        content = f"started {colour_started_at(host, colour)}\nits new config.properties\n"
        record = CONTRACT["bluegreen_pending_restart_files"][colour]
        assert host.run("printf '%%s' %s > %s", content, record).rc == 0


def check_pending_records_dropped(host) -> None:
    """The torchserve role, as site.yml runs it, drops the records of changes the restart
    applied, and restarts no colour for them (the idle one would restart for a record of
    this start)."""
    started = {colour: colour_started_at(host, colour) for colour in COLOURS}
    converge = run_ansible(
        "ansible", "modelserve", "-b", "-m", "ansible.builtin.include_role",
        "-a", "name=torchserve", timeout=300,
    )  # fmt: skip
    assert converge.returncode == 0, converge.output[-3000:]
    for colour in COLOURS:
        record = CONTRACT["bluegreen_pending_restart_files"][colour]
        assert not host.file(record).exists, (colour, host.file(record).content_string)
    assert {colour: colour_started_at(host, colour) for colour in COLOURS} == started


@pytest.mark.usefixtures("blue_in_production")
@pytest.mark.parametrize("kind", ["vm", "docker daemon"])
def test_stack_comes_back_after_a_restart(host, tmp_path: Path, kind: str) -> None:
    wait_until_clear(
        "every target up before the restart", lambda: targets_down(host), time.monotonic(), 120
    )
    stack = running_containers(host)
    assert {"nginx", "prometheus", "alertmanager", CONSUMER, SIMULATOR} <= stack, stack
    reloaded_before = reloaded_at(host)
    run_reload_handlers(tmp_path)
    wait_until_clear(
        "Prometheus reloaded by the handler",
        lambda: [] if reloaded_at(host) > reloaded_before else ["config not reloaded"],
        time.monotonic(),
        30,
    )

    # Records of changes waiting for a restart: the restart applies them, and the next
    # converge must drop them.
    write_pending_records(host)

    started, started_epoch = time.monotonic(), time.time()
    restart(kind, host)
    if kind == "vm":
        wait_until_clear("the VM booted", lambda: booting(host), started, BOOT_TIMEOUT_S)
    answered = wait_until_clear("/predict answered", predict_problems, started, BOOT_TIMEOUT_S)
    assert predict("/predict").headers["X-Model-Colour"] == COLOUR
    assert active_colour(host) == COLOUR
    back = wait_until_clear(
        "every container running again",
        lambda: sorted(stack - running_containers(host)),
        started,
        BOOT_TIMEOUT_S,
    )
    up = wait_until_clear(
        "every Prometheus target up", lambda: targets_down(host), started, BOOT_TIMEOUT_S
    )
    rules = wait_until_clear(
        "every rule group evaluated since, every rule healthy",
        lambda: rules_not_evaluated_since(host, started_epoch),
        started,
        BOOT_TIMEOUT_S,
    )
    print(
        f"{kind} restart: /predict answered ({COLOUR}) after {answered:.1f} s, every container"
        f" ran after {back:.1f} s, every target up after {up:.1f} s, rules evaluated after"
        f" {rules:.1f} s"
    )
    check_drift_counted_once(host, started_epoch)
    check_pending_records_dropped(host)
