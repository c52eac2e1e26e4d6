"""rollout.yml under load: a good candidate becomes production step by step; a candidate
that fails requests, answers otherwise or answers slowly is rolled back by its gate, and
clients only ever see what that gate allowed.

Each test deploys a candidate to the idle colour (deploy_model.yml), runs rollout.yml
while wrk keeps /predict busy and a probe records which colour answered what, and reports
how long the rollout took. Windows are short here (the test bed's traffic is high)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    REPO,
    TOLERANCE,
    PlaybookRun,
    PredictLoad,
    active_colour,
    deploy,
    idle_colour,
    predict,
    run_playbook,
    user_environment,
)

# Each test takes production and the idle colour as the previous one left them (a rolled
# back candidate stays idle until the next one replaces it): one restore for the module.
pytestmark = pytest.mark.usefixtures("restore_delivered_model_after_module")

WINDOW_S = 15
# Two inputs in turn: the reference input (the smoke tests') and one whose first feature
# is above 0.5, which the failing candidate refuses.
WRK_TWO_INPUTS = """\
local bodies = {'{"data": [0.2, 0.6]}', '{"data": [0.7, 0.6]}'}
local sent = 0
request = function()
  sent = sent + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[sent % 2 + 1])
end
"""
FAILING_MODEL = '''
import torch


class LinearRegressor(torch.nn.Module):
    """The delivered model, except that it fails every row whose first feature is > 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 0.5).any()):
            raise RuntimeError("candidate defect")
        return self.linear(x)
'''
SLOW_MODEL = '''
import time

import torch


class LinearRegressor(torch.nn.Module):
    """The delivered model, 50 ms slower per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return self.linear(x)
'''


class Probe:
    """Posts the reference input to a route every 50 ms; records (colour, output, status)."""

    def __init__(self, route: str = "/predict") -> None:
        self.route = route
        self.answers: list[tuple[str, float | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.wait(0.05):
                try:
                    response = predict(self.route, session=session)
                except requests.RequestException:
                    self.answers.append(("", None, 0))
                    continue
                output = response.json().get("output") if response.ok else None
                colour = response.headers.get("X-Model-Colour", "")
                self.answers.append((colour, output, response.status_code))

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def candidate(tmp_path: Path, model_py: str | None = None) -> Path:
    """The delivered model, with another model.py if given."""
    model_dir = tmp_path / "candidate"
    shutil.copytree(REPO / "files/model", model_dir)
    if model_py is not None:
        (model_dir / "model.py").write_text(model_py)
    return model_dir


def rollout(*extra: str) -> tuple[PlaybookRun, float]:
    started = time.monotonic()
    run = run_playbook("rollout.yml", "-e", f"bluegreen_rollout_window_s={WINDOW_S}", *extra)
    return run, time.monotonic() - started


def rollout_status() -> str:
    """status.yml's rollout line."""
    status = run_playbook("status.yml")
    assert status.returncode == 0, status.output[-4000:]
    lines = re.findall(r'"rollout: [^"]*"', status.output)
    assert len(lines) == 1, status.output[-4000:]
    return lines[0]


def assert_rolled_back(host, run: PlaybookRun, production: str, gate: str) -> None:
    """The run failed on ``gate``, measured (not for want of traffic), and nginx's live
    configuration routes everything to production again, with no copy to the target."""
    assert run.returncode != 0, run.output
    assert f"Rolled back: all traffic is on {production} again" in run.output, run.output[-3000:]
    reason = run.output[run.output.rindex("Rolled back:") :].split('"')[0]
    assert f"the {gate} gate:" in reason, reason
    assert "the requests gate" not in reason and "not measured" not in reason, reason
    assert active_colour(host) == production
    live = host.check_output("docker exec nginx nginx -T 2>/dev/null")
    assert not re.search(r"^\s*(split_clients|mirror) ", live, re.MULTILINE), live
    assert {predict("/predict").headers["X-Model-Colour"] for _ in range(20)} == {production}
    assert rollout_status() == '"rollout: none"'


def test_a_good_candidate_goes_through_every_step_with_no_request_lost(
    host, tmp_path: Path, reference_output: float
) -> None:
    production = active_colour(host)
    target = idle_colour(production)
    assert deploy(candidate(tmp_path), "1.1", reference_output).returncode == 0
    with (
        PredictLoad(tmp_path, connections=4, limit_s=600) as load,
        Probe() as probe,
        Probe("/test/predict") as test_probe,
    ):
        run, took = rollout()
    print(f"good candidate: rollout.yml took {took:.0f} s")
    assert run.returncode == 0, run.output[-4000:]
    for step in ("shadow", "canary 5 %", "canary 25 %", "canary 50 %"):
        assert f"{step}: requests" in run.output, step
    summary = load.summary()
    assert summary.failed == 0, load.output
    assert active_colour(host) == target
    assert predict("/predict").headers["X-Model-Colour"] == target
    # Every client got the model's answer, from production, then the canary, then both.
    assert all(status == 200 for _, _, status in probe.answers), probe.answers[-5:]
    assert all(abs(output - reference_output) <= TOLERANCE for _, output, _ in probe.answers)
    assert {colour for colour, _, _ in probe.answers} == {production, target}
    # /test/predict kept going to the idle colour: the target until it became production.
    test_colours = [colour for colour, _, _ in test_probe.answers]
    promoted = test_colours.index(production)
    assert set(test_colours[:promoted]) == {target}
    assert set(test_colours[promoted:]) == {production}


def test_a_candidate_with_other_answers_is_stopped_in_shadow_unseen(
    host, tmp_path: Path, new_model: tuple[Path, float], reference_output: float
) -> None:
    production = active_colour(host)
    model_dir, new_output = new_model
    assert deploy(model_dir, "2.0", new_output).returncode == 0
    with PredictLoad(tmp_path, connections=4, limit_s=300) as load, Probe() as probe:
        run, took = rollout()
    print(f"candidate with other answers: stopped after {took:.0f} s")
    assert_rolled_back(host, run, production, "outputs")
    assert "The shadow step failed" in run.output
    assert load.summary().failed == 0, load.output
    # No client ever saw the candidate or its answer.
    assert {colour for colour, _, _ in probe.answers} == {production}
    assert all(abs(output - reference_output) <= TOLERANCE for _, output, _ in probe.answers)


def test_a_failing_candidate_is_rolled_back_at_the_first_canary_step(
    host, tmp_path: Path, reference_output: float
) -> None:
    production = active_colour(host)
    model_dir = candidate(tmp_path, FAILING_MODEL)
    assert deploy(model_dir, "3.0", reference_output).returncode == 0  # its smoke input passes
    with PredictLoad(tmp_path, connections=4, limit_s=300, script=WRK_TWO_INPUTS) as load:
        run, took = rollout("-e", "bluegreen_rollout_shadow=false")
    print(f"failing candidate: rolled back after {took:.0f} s")
    assert_rolled_back(host, run, production, "errors")
    assert "The canary 5 % step failed" in run.output
    summary = load.summary()
    # It failed half of what it got, and it got 5 %: clients saw at most that share fail.
    print(f"failing candidate: {summary.failed} of {summary.requests} requests failed")
    assert 0 < summary.failed <= 0.05 * summary.requests


def test_a_slow_candidate_is_rolled_back_on_the_latency_gate(
    host, tmp_path: Path, reference_output: float
) -> None:
    production = active_colour(host)
    assert deploy(candidate(tmp_path, SLOW_MODEL), "4.0", reference_output).returncode == 0
    with PredictLoad(tmp_path, connections=4, limit_s=300) as load:
        run, took = rollout("-e", "bluegreen_rollout_shadow=false")
    print(f"slow candidate: rolled back after {took:.0f} s")
    assert_rolled_back(host, run, production, "latency")
    assert load.summary().failed == 0, load.output


def test_bad_rollout_arguments_change_nothing(host) -> None:
    production = active_colour(host)
    for extra, words in [
        (("-e", f"target={production}"), "target must be the idle colour"),
        (("-e", '{"bluegreen_rollout_steps": [50, 25]}'), "must be increasing percentages"),
        (("-e", '{"bluegreen_rollout_steps": [5, 100]}'), "must be increasing percentages"),
        (("-e", "bluegreen_rollout_window_s=1"), "must be 10 or more"),
    ]:
        run = run_playbook("rollout.yml", *extra)
        assert run.returncode != 0 and words in run.output, (extra, run.output[-2000:])
        assert "Nothing was changed" in run.output
        assert active_colour(host) == production


def test_an_interrupted_rollout_is_routed_back_by_the_next_converge(host) -> None:
    production = active_colour(host)
    target = idle_colour(production)
    one_step = '{"bluegreen_rollout_shadow": false, "bluegreen_rollout_steps": [50]}'
    argv = ["ansible-playbook", "rollout.yml", "-e", "bluegreen_rollout_window_s=120",
            "-e", one_step]  # fmt: skip
    process = subprocess.Popen(
        argv, cwd=REPO, env=user_environment(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        # Killed once half of /predict goes to the target: mid-step, as a lost SSH
        # session or a Ctrl-C leaves it.
        deadline = time.monotonic() + 300
        while target not in {predict("/predict").headers["X-Model-Colour"] for _ in range(20)}:
            assert process.poll() is None and time.monotonic() < deadline, "no canary step seen"
            time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert rollout_status() == (
        f'"rollout: IN PROGRESS OR INTERRUPTED: {target} at canary 50 % of /predict; if no '
        'rollout.yml is running, run rollout.yml or site.yml to route all traffic to production"'
    )
    converge = run_playbook("site.yml")
    assert converge.returncode == 0, converge.output[-4000:]
    assert f"WARNING: a rollout to {target} was interrupted at canary 50" in converge.output
    assert {predict("/predict").headers["X-Model-Colour"] for _ in range(50)} == {production}
    assert active_colour(host) == production
    assert rollout_status() == '"rollout: none"'
