"""The upgrade path: a host converged by the layout before the restructure (issue 12)
converges with this checkout under load, keeping its active colour, its deployed models
and its drift state, and without restarting production: what production's restart waits
for applies at the first converge after a swap has made that colour idle.

The baseline is that revision of this repository, taken from git history: a clone
without it cannot run this test, and the test says so instead of passing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import (
    COLOURS,
    CONTRACT,
    FACT_FILE,
    HTTPS_URL,
    REFERENCE_INPUT,
    REPO,
    TOLERANCE,
    PredictLoad,
    active_colour,
    colour_container,
    idle_colour,
    predict,
    run_ansible,
    run_playbook,
    user_environment,
)

# main when issue 12 was filed: roles/monitoring for four services, playbooks/ imported
# by root stubs, the handler in files/model.
BASELINE = "1a79ceb4db82e74a602681189fdcdc67041f618f"
MODELS_FACT_FILE: str = CONTRACT["bluegreen_models_fact_file"]
PROMETHEUS = "http://127.0.0.1:9090"
# What roles/torchserve records, one per line, for production's held restart.
PENDING_REASONS = {
    "a new archive of the model it loads",
    "its new config.properties",
    "its new log4j2.xml",
    "its new container settings",
}
NGINX_CONTAINER = "nginx"
WRK_LIMIT_S = 900  # bounds a hung converge only; wrk is stopped when site.yml ends


def baseline_checkout(destination: Path) -> Path:
    """The baseline revision's files, with this checkout's venv and image cache."""
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{BASELINE}^{{commit}}"], check=False
    )
    assert known.returncode == 0, (
        f"revision {BASELINE} is not in this clone's history (a shallow clone?): "
        "fetch it (git fetch --unshallow) to test the upgrade path"
    )
    archive = destination / "baseline.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", BASELINE], stdout=out, check=True)
    tree = destination / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    for shared in (".venv", ".cache"):
        (tree / shared).symlink_to(REPO / shared)
    return tree


def run_baseline_playbook(tree: Path, playbook: str, *extra: str) -> None:
    result = subprocess.run(
        ["ansible-playbook", playbook, *extra],
        cwd=tree,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def training_counts(host) -> dict[str, float]:
    """Rows of training data the drift consumer has counted, per feature."""
    url = f"{PROMETHEUS}/api/v1/query?query={quote('max by (feature) (drift_training_count)')}"
    result = json.loads(host.check_output(f"curl -sf '{url}'"))["data"]["result"]
    return {s["metric"]["feature"]: float(s["value"][1]) for s in result}


def samples_at(host, expr: str, at: float) -> int:
    url = f"{PROMETHEUS}/api/v1/query?query={quote(expr)}&time={at:.3f}"
    return len(json.loads(host.check_output(f"curl -sf '{url}'"))["data"]["result"])


def started_at(host, colour: str) -> str:
    """When the colour's container last started."""
    return host.check_output(
        "docker inspect -f '{{.State.StartedAt}}' %s", colour_container(colour)
    ).strip()


def status_lines(*names: str) -> dict[str, str]:
    """The lines of status.yml's report on these colours or services, from one run."""
    status = run_playbook("status.yml")
    assert status.returncode == 0, status.output[-4000:]
    found = {}
    for name in names:
        lines = re.findall(rf'"{name}: [^"]*"', status.output)
        assert len(lines) == 1, status.output[-4000:]
        found[name] = lines[0]
    return found


def https_predict() -> requests.Response:
    """/predict over HTTPS (the test bed's certificate is self-signed)."""
    answer = requests.post(
        f"{HTTPS_URL}/predict", json={"data": REFERENCE_INPUT}, timeout=10, verify=False
    )
    answer.raise_for_status()
    return answer


@pytest.mark.usefixtures("restore_delivered_model")
def test_a_host_of_the_previous_layout_upgrades_under_load(
    host, tmp_path: Path, new_model: tuple[Path, float], reference_output: float
) -> None:
    baseline = baseline_checkout(tmp_path)
    # nginx's container as the baseline makes it: Docker's module keeps a port and a mount
    # the baseline does not name (HTTPS's), so this VM's would otherwise keep them.
    host.run(f"docker rm -f {NGINX_CONTAINER}")
    # The colours too, as the baseline makes them: on TCP, with no inference socket, which
    # the baseline's validator could not copy with nginx's config directory either.
    host.run(f"docker rm -f {' '.join(colour_container(colour) for colour in COLOURS)}")
    host.run(f"rm -rf {CONTRACT['bluegreen_inference_sockets_dir']}")
    # With no model deployed yet, whatever earlier tests deployed: both colours load the
    # archive site.yml builds from files/model, production's the one the upgrade rebuilds.
    host.run(f"rm -f {MODELS_FACT_FILE}")
    # And its configuration as that layout writes it: the baseline's validator mounts
    # conf.d only, so this checkout's HTTPS server block would fail its checks. The key
    # unit is stopped first: it would write its file back (the baseline restarts it).
    host.run("systemctl stop modelserve-nginx-keys.path modelserve-nginx-keys.service")
    host.run("rm -rf /opt/modelserve/nginx/conf.d/*")
    run_baseline_playbook(baseline, "site.yml")
    assert "443/tcp" not in host.check_output(
        "docker inspect -f '{{json .HostConfig.PortBindings}}' %s", NGINX_CONTAINER
    )
    # State a fresh converge would not produce: another model, deployed by the baseline's
    # path (its delivery brings a handler), on the idle colour. Production serves the
    # delivered model, whose archive the upgrade rebuilds (the handler moved).
    production = active_colour(host)
    idle = idle_colour(production)
    model_dir, new_output = new_model
    shutil.copy(baseline / "files/model/handler.py", model_dir)
    deployment = {
        "model_dir": str(model_dir),
        "model_version": "2.0",
        "smoke_input": {"data": [0.2, 0.6]},
        "smoke_expected": new_output,
    }
    run_baseline_playbook(baseline, "deploy_model.yml", "-e", json.dumps(deployment))
    colour_record = host.file(FACT_FILE).content_string
    models_before = host.file(MODELS_FACT_FILE).content_string
    production_started = started_at(host, production)
    training_before = training_counts(host)
    assert training_before, "the baseline's drift consumer exported no training statistics"
    before_upgrade = time.time()

    with PredictLoad(tmp_path, connections=20, limit_s=WRK_LIMIT_S) as wrk:
        time.sleep(3)
        started = time.monotonic()
        upgrade = run_ansible("ansible-playbook", "site.yml", timeout=1200)
        upgrade_s = time.monotonic() - started
        time.sleep(3)
    assert upgrade.returncode == 0, upgrade.output[-4000:]
    load = wrk.summary()
    print(
        f"upgrade under load: site.yml took {upgrade_s:.1f} s, changed={upgrade.changed};"
        f" wrk: {load.requests} requests, {load.non_2xx} non-2xx,"
        f" socket errors {load.socket_errors or 'none'}"
    )
    assert load.requests > 500
    assert load.failed == 0, wrk.output

    # Production, its model and the record of it are what the baseline left; production
    # was not restarted, and says what its restart waits for.
    assert active_colour(host) == production
    answer = predict("/predict")
    assert answer.headers["X-Model-Colour"] == production
    assert abs(answer.json()["output"] - reference_output) <= TOLERANCE
    assert abs(predict("/test/predict").json()["output"] - new_output) <= TOLERANCE
    assert host.file(MODELS_FACT_FILE).content_string == models_before
    assert host.file(FACT_FILE).content_string == colour_record
    assert started_at(host, production) == production_started
    status = status_lines(production, idle, "nginx")
    assert "RESTART PENDING (a new archive of the model it loads" in status[production]
    record = host.file(CONTRACT["bluegreen_pending_restart_files"][production]).content_string
    started_line, *reasons = record.splitlines()
    assert started_line == f"started {production_started}", record
    assert reasons and set(reasons) <= PENDING_REASONS, record
    assert "PENDING" not in status[idle]
    # nginx kept its container, which the baseline made without HTTPS's port and mount:
    # HTTPS waits for a restart the operator chooses.
    assert "nginx: RESTART PENDING (its new container settings (" in status["nginx"]
    with pytest.raises(requests.ConnectionError):
        https_predict()
    # The drift consumer's state and Prometheus's history survived.
    training_after = training_counts(host)
    assert training_after.keys() == training_before.keys()
    for feature, count in training_before.items():
        assert training_after[feature] >= count, (feature, training_before, training_after)
    assert samples_at(host, "drift_training_count", before_upgrade - 30) > 0

    again = run_playbook("site.yml")
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.output[-4000:]

    # The held restart applies once a swap has made that colour idle (restore_delivered_model
    # then swaps back to it), and nginx's when the operator allows it: one converge for both
    # (nginx_allow_restart is the nginx role's alone; the plain converge above held both).
    swap = run_playbook("swap.yml", "-e", f"target={idle}")
    assert swap.returncode == 0, swap.output[-4000:]
    applied = run_playbook("site.yml", "-e", "nginx_allow_restart=true")
    assert applied.returncode == 0, applied.output[-4000:]
    assert started_at(host, production) != production_started
    assert abs(predict("/test/predict").json()["output"] - reference_output) <= TOLERANCE
    assert https_predict().headers["X-Model-Colour"] == idle
    status = status_lines(production, "nginx")
    assert "PENDING" not in status[production]
    assert "nginx: running with its settings" in status["nginx"]
