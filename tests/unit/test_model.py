"""The model class and its delivered weights (files/model/model.pth)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import make_weights
import pytest
import torch
from conftest import MODEL_DIR
from model import LinearRegressor

from modelserve.handler import load_model

REFERENCE_INPUT = [0.2, 0.6]
REFERENCE_OUTPUT = 0.6496530771255493
TOLERANCE = 1e-6
# The delivered parameters, written out here rather than imported from make_weights, so
# a change there shows up as a failing test.
EXPECTED_WEIGHT = [[0.890637, 1.052189]]
EXPECTED_BIAS = [-0.159788]
WEIGHTS = MODEL_DIR / "model.pth"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)


def test_linear_regressor_maps_two_features_to_one_output() -> None:
    model = LinearRegressor()
    assert model.linear.in_features == 2
    assert model.linear.out_features == 1
    assert model(torch.zeros(5, 2)).shape == (5, 1)


def test_weights_file_is_a_float32_state_dict_with_the_delivered_values(
    state: dict[str, torch.Tensor],
) -> None:
    assert set(state) == {"linear.weight", "linear.bias"}
    assert all(t.dtype == torch.float32 for t in state.values())
    torch.testing.assert_close(state["linear.weight"], torch.tensor(EXPECTED_WEIGHT))
    torch.testing.assert_close(state["linear.bias"], torch.tensor(EXPECTED_BIAS))


def test_reference_input_gives_the_reference_output(state: dict[str, torch.Tensor]) -> None:
    model = load_model(MODEL_DIR)
    with torch.inference_mode():
        served = model(torch.tensor([REFERENCE_INPUT])).item()
        # The same sum straight from the stored tensors, without the model class.
        from_weights = torch.nn.functional.linear(
            torch.tensor([REFERENCE_INPUT]), state["linear.weight"], state["linear.bias"]
        ).item()
    by_hand = sum(w * x for w, x in zip(EXPECTED_WEIGHT[0], REFERENCE_INPUT, strict=True))
    by_hand += EXPECTED_BIAS[0]
    assert abs(served - REFERENCE_OUTPUT) <= TOLERANCE
    assert abs(served - from_weights) <= TOLERANCE
    assert abs(served - by_hand) <= TOLERANCE


def test_load_model_gives_an_eval_mode_cpu_model() -> None:
    model = load_model(MODEL_DIR)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_make_weights_reproduces_the_delivered_file_byte_for_byte(tmp_path: Path) -> None:
    # Same file name: torch.save names the archive's top folder after it.
    rebuilt = make_weights.write_weights(tmp_path / "model.pth")
    assert sha256(rebuilt) == sha256(WEIGHTS)


def test_make_weights_runs_as_a_script(tmp_path: Path) -> None:
    output = tmp_path / "out" / "model.pth"
    result = subprocess.run(
        [sys.executable, str(MODEL_DIR / "make_weights.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sha256(output) == sha256(WEIGHTS)


def test_a_model_file_with_several_classes_names_its_class_in_the_config(tmp_path: Path) -> None:
    """The platform's handler finds the one nn.Module class model.py defines (imported
    ones do not count); with several, the model config's handler: model_class picks one."""
    shutil.copy(WEIGHTS, tmp_path / "model.pth")
    source = (MODEL_DIR / "model.py").read_text()
    extra = "\n\nfrom torch.nn import Linear  # imported: not a candidate\n\n\n"
    extra += "class Other(torch.nn.Module):\n    pass\n"
    (tmp_path / "model.py").write_text(source + extra)
    with pytest.raises(ImportError, match=r"model_class.*\['LinearRegressor', 'Other'\]"):
        load_model(tmp_path)
    model = load_model(tmp_path, "LinearRegressor")
    assert type(model).__name__ == "LinearRegressor"
    with pytest.raises(ImportError, match=r"no torch\.nn\.Module class 'Missing'"):
        load_model(tmp_path, "Missing")
