"""The logrotate role: rotation by cron, nginx reopens its logs, no line lost."""

from __future__ import annotations

import threading
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


def send_requests(url: str, stop: threading.Event, limit: int = 20_000) -> tuple[int, int]:
    """POST the reference input on one keep-alive connection until ``stop`` is set (at
    most ``limit`` times); (sent, answered 200)."""
    sent = ok = 0
    with requests.Session() as session:
        while not stop.is_set() and sent < limit:
            response = session.post(url, json={"data": REFERENCE_INPUT}, timeout=10)
            sent += 1
            ok += response.status_code == 200
    return sent, ok


def test_forced_rotation_under_load_loses_no_line(host) -> None:
    """Rotate twice while 8 clients send requests, which go on for 2 s after the second
    rotation; every request is logged, the last ones in the new file."""
    marker = uuid.uuid4().hex
    clients = 8
    rotate = (
        "/usr/sbin/logrotate --force --state /var/lib/logrotate/modelserve-nginx.status "
        "/etc/logrotate.d/modelserve-nginx"
    )
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [
            pool.submit(send_requests, f"{BASE_URL}/predict?run={marker}", stop)
            for _ in range(clients)
        ]
        try:
            for _ in range(2):
                time.sleep(1.5)
                assert host.run(rotate).rc == 0
            time.sleep(2)
            still_sending = not any(r.done() for r in results)
        finally:
            stop.set()
        counts = [r.result(timeout=120) for r in results]
    sent = sum(c[0] for c in counts)
    answered = sum(c[1] for c in counts)

    logged = int(
        host.check_output(
            f"zcat -f {LOG_DIR}/production.access.log* | grep -c 'run={marker}' || true"
        )
    )
    print(
        f"rotation under load: {sent} sent, {answered} answered 200, {logged} logged, 2 rotations"
    )
    assert still_sending, "a client stopped before the second rotation; raise the limit"
    assert answered == sent
    assert logged == sent
    # nginx writes to the new file after the rotation, which was created as configured.
    current = host.file(f"{LOG_DIR}/production.access.log")
    assert marker in current.content_string
    assert current.mode == 0o640
    assert host.file(f"{LOG_DIR}/production.access.log.1").exists
