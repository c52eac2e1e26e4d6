"""The model-update path: deploy_model.yml to the idle colour, swap, swap back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REFERENCE_INPUT, REPO, predict, run_playbook

TOLERANCE = 1e-6
NEW_WEIGHT, NEW_BIAS = [[1.0, 1.0]], [0.5]


def deploy(model_dir: Path, version: str, expected: float, *extra: str):
    variables = {
        "model_dir": str(model_dir),
        "model_version": version,
        "smoke_input": {"data": REFERENCE_INPUT},
        "smoke_expected": expected,
    }
    return run_playbook("deploy_model.yml", "-e", json.dumps(variables), *extra)


@pytest.fixture
def new_model(tmp_path: Path) -> tuple[Path, float]:
    """The delivered model with other weights, and what torch says it answers."""
    import torch

    model_dir = tmp_path / "model-2.0"
    shutil.copytree(REPO / "files/model", model_dir)
    weight, bias = torch.tensor(NEW_WEIGHT), torch.tensor(NEW_BIAS)
    torch.save({"linear.weight": weight, "linear.bias": bias}, model_dir / "model.pth")
    expected = torch.nn.functional.linear(torch.tensor([REFERENCE_INPUT]), weight, bias).item()
    return model_dir, float(expected)


@pytest.fixture
def restore_delivered_model(reference_output: float):
    """Leave both colours serving files/model 1.0, green in production."""
    yield
    assert run_playbook("swap.yml", "-e", "target=green").returncode == 0
    restored = deploy(REPO / "files/model", "1.0", reference_output)
    assert restored.returncode == 0, restored.output
    assert abs(predict("/test/predict").json()["output"] - reference_output) <= TOLERANCE


def answer(route: str) -> tuple[str, float]:
    response = predict(route)
    assert response.status_code == 200, response.text
    return response.headers["X-Model-Colour"], response.json()["output"]


@pytest.mark.usefixtures("restore_delivered_model")
def test_deploy_to_idle_then_swap_and_roll_back(new_model, reference_output: float) -> None:
    model_dir, new_output = new_model
    assert abs(new_output - reference_output) > 0.1

    first = deploy(model_dir, "2.0", new_output)
    assert first.returncode == 0, first.output
    colour, output = answer("/test/predict")
    assert colour == "blue" and abs(output - new_output) <= TOLERANCE
    colour, output = answer("/predict")
    assert colour == "green" and abs(output - reference_output) <= TOLERANCE

    again = deploy(model_dir, "2.0", new_output)
    assert again.returncode == 0, again.output
    assert again.changed == 0, again.output

    to_new = run_playbook("swap.yml", "-e", "target=blue")
    assert to_new.returncode == 0, to_new.output
    colour, output = answer("/predict")
    assert colour == "blue" and abs(output - new_output) <= TOLERANCE

    rollback = run_playbook("swap.yml", "-e", "target=green")
    assert rollback.returncode == 0, rollback.output
    colour, output = answer("/predict")
    assert colour == "green" and abs(output - reference_output) <= TOLERANCE

    # A converge of site.yml keeps what was deployed.
    converge = run_playbook("site.yml")
    assert converge.returncode == 0, converge.output
    assert converge.changed == 0, converge.output
    assert abs(answer("/test/predict")[1] - new_output) <= TOLERANCE


@pytest.mark.usefixtures("restore_delivered_model")
def test_deploy_with_swap_makes_the_new_model_production(new_model) -> None:
    model_dir, new_output = new_model
    result = deploy(model_dir, "2.1", new_output, "-e", "swap=true")
    assert result.returncode == 0, result.output
    colour, output = answer("/predict")
    assert colour == "blue" and abs(output - new_output) <= TOLERANCE


def test_deploy_failing_its_smoke_test_leaves_production_alone(
    new_model, reference_output: float
) -> None:
    model_dir, new_output = new_model
    try:
        result = deploy(model_dir, "3.0", new_output + 1.0, "-e", "swap=true")
        assert result.returncode != 0
        assert "Production was not touched" in result.output
        colour, output = answer("/predict")
        assert colour == "green" and abs(output - reference_output) <= TOLERANCE
    finally:
        restored = deploy(REPO / "files/model", "1.0", reference_output)
        assert restored.returncode == 0, restored.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"model_dir": "/nonexistent"}, "model_dir must hold"),
        ({"model_version": "2.0; rm -rf /"}, "model_version must be"),
        ({"smoke_expected": None}, "Give model_dir, model_version"),
    ],
)
def test_bad_deploy_arguments_fail_clearly(host, extra: dict, message: str) -> None:
    before = host.file("/opt/modelserve/torchserve/blue/config.properties").content_string
    variables = {
        "model_dir": str(REPO / "files/model"),
        "model_version": "9.9",
        "smoke_input": {"data": REFERENCE_INPUT},
        "smoke_expected": 0.65,
        **extra,
    }
    variables = {k: v for k, v in variables.items() if v is not None}
    result = run_playbook("deploy_model.yml", "-e", json.dumps(variables))
    assert result.returncode != 0
    assert message in result.output, result.output[-3000:]
    assert host.file("/opt/modelserve/torchserve/blue/config.properties").content_string == before
