"""The logrotate role: rotation by cron, nginx reopens its logs, no line lost."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import BASE_URL, REFERENCE_INPUT

LOG_DIR = "/var/log/modelserve-nginx"


def test_cron_runs_logrotate_for_the_nginx_logs(host) -> None:
    assert host.service("cron").is_running
    crontab = host.check_output("crontab -l -u root")
    assert "/usr/sbin/logrotate --state" in crontab
    assert "/etc/logrotate.d/modelserve-nginx" in crontab
    rules = host.file("/etc/logrotate.d/modelserve-nginx").content_string
    for directive in ("daily", "maxsize", "compress", "delaycompress", "missingok", "notifempty"):
        assert directive in rules
    assert "nginx -s reopen" in rules


def send_requests(url: str, count: int) -> int:
    """POST the reference input `count` times on one keep-alive connection; 200s."""
    ok = 0
    with requests.Session() as session:
        for _ in range(count):
            response = session.post(url, json={"data": REFERENCE_INPUT}, timeout=10)
            ok += response.status_code == 200
    return ok


def test_forced_rotation_under_load_loses_no_line(host) -> None:
    """Rotate twice while 8 clients send 400 requests each; every one is logged."""
    marker = uuid.uuid4().hex
    clients, per_client = 8, 400
    rotate = (
        "/usr/sbin/logrotate --force --state /var/lib/logrotate/modelserve-nginx.status "
        "/etc/logrotate.d/modelserve-nginx"
    )
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [
            pool.submit(send_requests, f"{BASE_URL}/predict?run={marker}", per_client)
            for _ in range(clients)
        ]
        rotations = 0
        while not all(r.done() for r in results) and rotations < 2:
            time.sleep(1.5)
            assert host.run(rotate).rc == 0
            rotations += 1
        answered = sum(r.result(timeout=120) for r in results)
    sent = clients * per_client

    logged = int(
        host.check_output(
            f"zcat -f {LOG_DIR}/production.access.log* | grep -c 'run={marker}' || true"
        )
    )
    print(
        f"rotation under load: {sent} sent, {answered} answered 200, {logged} logged, "
        f"{rotations} rotations"
    )
    assert rotations == 2, "the load ended before both rotations; raise per_client"
    assert answered == sent
    assert logged == sent
    # nginx writes to the new file after the rotation, which was created as configured.
    current = host.file(f"{LOG_DIR}/production.access.log")
    assert marker in current.content_string
    assert current.mode == 0o640
    assert host.file(f"{LOG_DIR}/production.access.log.1").exists
