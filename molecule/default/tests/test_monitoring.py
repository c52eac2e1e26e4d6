"""The monitoring roles: scrape targets, alert rules, Alertmanager, dashboards."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import BASE_URL, COLOURS, REFERENCE_INPUT, REPO, run_ansible

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
MONITORING_DIR = "/opt/modelserve/monitoring"
DATASOURCE_UID = "modelserve-prometheus"
DASHBOARDS = ("serving.json", "host.json", "drift.json", "rollout.json")
PROMETHEUS_IMAGE = "modelserve-local/prometheus:v2.53.3"


def api(host, url: str) -> dict:
    return json.loads(host.check_output(f"curl -sf '{url}'"))


def query(host, expr: str) -> list[dict]:
    result = api(host, f"{PROMETHEUS}/api/v1/query?query={quote(expr)}")
    assert result["status"] == "success", result
    return result["data"]["result"]


def send_traffic(count: int = 20) -> None:
    """Some answers of each kind from both colours, so every serving series exists."""
    with requests.Session() as session:
        for route in ("/predict", "/test/predict"):
            for _ in range(count):
                ok = session.post(f"{BASE_URL}{route}", json={"data": REFERENCE_INPUT}, timeout=10)
                assert ok.status_code == 200
            bad = session.post(f"{BASE_URL}{route}", data=b"not json", timeout=10)
            assert bad.status_code == 400


def test_every_scrape_target_is_up(host) -> None:
    deadline = time.monotonic() + 90
    while True:
        targets = api(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not down, f"targets not up: {down}"
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs >= {"prometheus", "alertmanager", "torchserve", "node", "nginx", "route_metrics"}
    colours = {t["labels"].get("colour") for t in targets if t["labels"]["job"] == "torchserve"}
    assert colours == set(COLOURS)


def test_alert_rules_are_loaded(host) -> None:
    groups = api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} >= {
        "targets",
        "serving",
        "host",
        "drift-live",
        "drift-training",
        "drift",
    }
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert alerts >= {
        "TargetDown",
        "ModelServer5xxRatioHigh",
        "ModelServerLatencyHigh",
        "ModelServerQueueLatencyHigh",
        "HostCpuBusy",
        "HostMemoryLow",
        "HostDiskFull",
        "DriftMeanShift",
        "DriftDistributionShift",
        "DriftNoTrainingData",
    }


def render_with_role_defaults(template: Path, dest: Path) -> None:
    """Template a rules file as the role does, with its defaults (the test bed overrides
    some thresholds; the rules' unit tests are written against the defaults)."""
    result = run_ansible(
        "ansible", "localhost", "--connection", "local", "-m", "ansible.builtin.template",
        "-a", f"src={template} dest={dest}", "-e", f"@{REPO}/roles/prometheus/defaults/main.yml",
        "-e", f"role_path={REPO}/roles/prometheus",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.output


@pytest.mark.parametrize("group", ["serving", "drift"])
def test_alert_rules_pass_their_unit_tests(tmp_path: Path, group: str) -> None:
    """promtool test rules, with the Prometheus image the stack runs."""
    templates = REPO / "roles/prometheus/templates/rules"
    render_with_role_defaults(templates / f"{group}.rules.yml.j2", tmp_path / f"{group}.rules.yml")
    tests = REPO / f"roles/prometheus/tests/{group}.rules.test.yml"
    (tmp_path / tests.name).write_text(tests.read_text())
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", "0",
         "--entrypoint", "/bin/promtool", "-v", f"{tmp_path}:/t:ro", "-w", "/t", PROMETHEUS_IMAGE,
         "test", "rules", tests.name],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_answers(host) -> None:
    status = api(host, f"{ALERTMANAGER}/api/v2/status")
    assert status["cluster"]["status"] in ("ready", "disabled")
    assert "route" in status["config"]["original"]
    assert isinstance(api(host, f"{ALERTMANAGER}/api/v2/alerts"), list)
    # Prometheus has found it.
    managers = api(host, f"{PROMETHEUS}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [m["url"] for m in managers] == ["http://alertmanager:9093/api/v2/alerts"]


def test_uis_are_published_on_loopback_only_and_exporters_not_at_all(host) -> None:
    for container, port in (("prometheus", 9090), ("alertmanager", 9093), ("locust", 8089)):
        published = host.check_output(f"docker port {container} {port}/tcp").splitlines()
        assert published == [f"127.0.0.1:{port}"], (container, published)
    for container in ("node-exporter", "nginx-exporter"):
        assert host.check_output(f"docker port {container}") == ""


def dashboard_panels(host, name: str) -> list[dict]:
    return json.loads(host.file(f"{MONITORING_DIR}/grafana/dashboards/{name}").content_string)[
        "panels"
    ]


def test_grafana_provisioning_points_at_prometheus(host) -> None:
    datasource = host.file(
        f"{MONITORING_DIR}/grafana/provisioning/datasources/datasource.yml"
    ).content_string
    assert f"uid: {DATASOURCE_UID}" in datasource
    assert "url: http://prometheus:9090" in datasource
    provider = host.file(
        f"{MONITORING_DIR}/grafana/provisioning/dashboards/dashboards.yml"
    ).content_string
    assert "path: /var/lib/grafana/dashboards" in provider


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_uses_the_provisioned_datasource(host, name: str) -> None:
    panels = dashboard_panels(host, name)
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_query_returns_data(host, name: str) -> None:
    """Each query, with Grafana's $__rate_interval as 1m, against the live Prometheus."""
    queries = [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m"))
        for panel in dashboard_panels(host, name)
        for target in panel["targets"]
    ]
    deadline = time.monotonic() + 120
    while True:
        send_traffic()
        empty = [(title, expr) for title, expr in queries if not query(host, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not empty, f"queries without data: {empty}"
    print(f"{name}: {len(queries)} queries, all with data")


def test_settings_of_the_former_monitoring_role_are_refused(tmp_path: Path) -> None:
    """A host's settings written for the single monitoring role stop the converge, each
    with its new name, instead of being ignored (alerts without their receiver)."""
    renamed = {
        "monitoring_alertmanager_webhook_url": "alertmanager_webhook_url",
        "monitoring_drift_window": "prometheus_drift_window",
        "monitoring_alert_5xx_ratio": "prometheus_alert_5xx_ratio",
        "monitoring_nginx_exporter_image": "nginx_exporter_image",
        "monitoring_network": "<role>_network of each monitoring role",
    }
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        # Nothing is written or started on this machine, refused or not.
        "check_mode": True,
        "vars": dict.fromkeys(renamed, "1m"),
        "roles": ["alertmanager"],
    }
    playbook = tmp_path / "old_settings.yml"
    playbook.write_text(json.dumps([play]))
    result = run_ansible("ansible-playbook", "-i", "localhost,", str(playbook), timeout=120)
    assert result.returncode != 0, result.output
    assert "Refuse settings of the former monitoring role" in result.output
    for old, new in renamed.items():
        assert f"{old} -> {new};" in result.output, result.output
    # Refused before anything else of the role ran.
    assert "Create the directories" not in result.output
