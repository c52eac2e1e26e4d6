"""The model-update path: deploy_model.yml to the idle colour, swap, swap back."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import (
    BASE_URL,
    REFERENCE_INPUT,
    REPO,
    TOLERANCE,
    active_colour,
    deploy,
    deploy_delivered,
    idle_colour,
    management,
    predict,
    run_playbook,
    served_versions,
)

PROMETHEUS = "http://127.0.0.1:9090"
# A handler a model team may bring (the opt-out): it answers, and does nothing else.
OWN_HANDLER = textwrap.dedent(
    """
    import importlib.util
    import json
    from pathlib import Path

    import torch

    _model = None


    def handle(data, context):
        global _model
        if _model is None:
            model_dir = Path(context.system_properties["model_dir"])
            spec = importlib.util.spec_from_file_location("own_model", model_dir / "model.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _model = module.LinearRegressor()
            _model.load_state_dict(torch.load(model_dir / "model.pth", weights_only=True))
            _model.eval()
        if data is None:
            return None
        answers = []
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            body = request.get("body", request.get("data"))
            row = body if isinstance(body, dict) else json.loads(bytes(body))
            with torch.no_grad():
                output = _model(torch.tensor([row["data"]], dtype=torch.float32))
            answers.append({"output": float(output.item()), "handler": "own"})
        return answers
    """
)


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
        deploy_delivered(reference_output)


@pytest.mark.usefixtures("restore_delivered_model")
def test_redeploying_a_default_version_beside_another_replaces_both(
    host, new_model, reference_output: float
) -> None:
    # What a deploy of 2.0 killed before it made 2.0 the default leaves on the idle colour:
    # 2.0 registered beside 1.0 from another archive (site.yml's), 1.0 the default.
    model_dir, new_output = new_model
    assert deploy(model_dir, "2.0", new_output).returncode == 0
    idle = idle_colour(active_colour(host))
    management(host, idle, "/models?url=model.mar&model_name=model&synchronous=true", "POST")
    management(host, idle, "/models/model/1.0/set-default", "PUT")
    assert served_versions(host, idle) == ["1.0", "2.0"]
    result = deploy(REPO / "files/model", "1.0", reference_output)
    assert result.returncode == 0, result.output[-3000:]
    assert served_versions(host, idle) == ["1.0"]
    colour, output = answer("/test/predict")
    assert colour == idle and abs(output - reference_output) <= TOLERANCE


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"model_dir": "/nonexistent"}, "model_dir must hold"),
        ({"model_version": "2.0; rm -rf /"}, "model_version must be"),
        ({"smoke_expected": None}, "Give model_dir, model_version"),
        # An existing file outside model_dir, named so that it would be written outside
        # the archive's directory on the host.
        ({"model_handler": "../" * 12 + "etc/hostname"}, "model_handler must be the name"),
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


def production_inputs(host, colour: str) -> float:
    """Rows the colour's handler has counted for drift (x1), as Prometheus last scraped."""
    expr = f'sum(modelserve_input_values_total{{colour="{colour}", feature="x1"}})'
    url = f"{PROMETHEUS}/api/v1/query?query={quote(expr)}"
    result = json.loads(host.check_output(f"curl -sf '{url}'"))["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def settled_production_inputs(host, colour: str, quiet_s: float = 12) -> float:
    """The count once it has stopped moving for quiet_s (scrapes are 5 s apart here)."""
    value, since = production_inputs(host, colour), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(2)
        now = production_inputs(host, colour)
        if now != value:
            value, since = now, time.monotonic()
    return value


@pytest.mark.usefixtures("restore_delivered_model")
def test_a_model_delivered_without_a_handler_is_validated_and_counted(host, new_model) -> None:
    """The model team ships model.py, weights and config; the platform's handler wraps it."""
    model_dir, new_output = new_model
    assert not (model_dir / "handler.py").exists()
    assert sorted(p.name for p in model_dir.iterdir() if p.suffix != ".py") == [
        "model.pth",
        "model_config.yaml",
    ]
    result = deploy(model_dir, "2.2", new_output, "-e", "swap=true")
    assert result.returncode == 0, result.output
    assert "WARNING: the model runs its own handler" not in result.output
    colour, output = answer("/predict")
    assert colour == "blue" and abs(output - new_output) <= TOLERANCE

    # Validation: what the client sent is refused with 400 and a message, per request.
    for body, message in (
        ('{"data": [0.2]}', "exactly 2 numbers"),
        ('{"data": [NaN, 0.6]}', "NaN is not a JSON number"),
        ("[0.2, 0.6]", "must be a JSON object"),
    ):
        response = requests.post(f"{BASE_URL}/predict", data=body, timeout=10)
        assert response.status_code == 400, (body, response.status_code, response.text)
        assert message in response.json()["error"], (body, response.text)

    # Drift counters: every answered production row is counted, and only those.
    before = settled_production_inputs(host, "blue")
    sent = 25
    for _ in range(sent):
        assert predict("/predict").status_code == 200
    deadline = time.monotonic() + 60
    while production_inputs(host, "blue") < before + sent and time.monotonic() < deadline:
        time.sleep(2)
    assert settled_production_inputs(host, "blue") == before + sent


@pytest.mark.usefixtures("restore_delivered_model")
def test_a_model_bringing_its_own_handler_opts_out_loudly(tmp_path: Path, reference_output) -> None:
    model_dir = tmp_path / "model-own"
    shutil.copytree(REPO / "files/model", model_dir)
    (model_dir / "handler.py").write_text(OWN_HANDLER)

    result = deploy(model_dir, "2.3", reference_output, "-e", "model_handler=handler.py")
    assert result.returncode == 0, result.output
    assert "WARNING: the model runs its own handler (handler.py)" in result.output
    assert "drift detection sees no live data" in result.output

    # Its handler answers on the idle colour, not the platform's.
    response = predict("/test/predict")
    assert response.status_code == 200, response.text
    assert response.json()["handler"] == "own"
    assert response.headers["X-Model-Colour"] == "blue"

    status = run_playbook("status.yml")
    assert status.returncode == 0, status.output
    # Long lines of the printed message wrap: compare with the whitespace collapsed.
    printed = " ".join(status.output.split())
    assert (
        "blue: healthy, model model version 2.3, WARNING: its own handler handler.py "
        "(no platform validation, no drift input counters)" in printed
    ), status.output
    assert re.search(r"green: healthy, model model version 1\.0(?!, WARNING)", printed), printed
