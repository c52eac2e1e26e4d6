"""Locust in the stack and the headless load test playbook."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from conftest import REPO, run_playbook


def test_locust_web_ui_listens_on_loopback_only(host) -> None:
    assert host.run("curl -sf http://127.0.0.1:8089/ -o /dev/null").rc == 0
    published = host.check_output("docker port locust 8089/tcp")
    assert published.splitlines() == ["127.0.0.1:8089"]


def test_headless_run_reports_back_to_the_controller() -> None:
    run = run_playbook(
        "loadtest.yml",
        "-e", "locust_users=10", "-e", "locust_spawn_rate=10", "-e", "locust_run_time=10s",
        "-e", "locust_invalid_share=0.1",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    print(run.output[-1500:])
    report = re.search(r"report: (\S+/report\.html)", run.output)
    assert report, run.output
    report_path = Path(report.group(1)).resolve()
    assert report_path.is_file() and report_path.stat().st_size > 10_000
    assert REPO / "loadtest-results" in report_path.parents
    with (report_path.parent / "stats_stats.csv").open() as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100
    # Malformed requests answered 400 are successes; nothing else may fail.
    assert int(total["Failure Count"]) == 0, rows
    assert int(rows["/predict (malformed)"]["Request Count"]) > 0
    summary = re.search(r"requests: (\d+), failures: (\d+)", run.output)
    assert summary and int(summary.group(1)) == int(total["Request Count"])
