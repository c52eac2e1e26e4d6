"""TorchServe handler for LinearRegressor: ``{"data": [x1, x2]}`` in, ``{"output": y}`` out.

Every request of a batch is validated on its own. Valid rows go through the model in one
forward pass; an invalid request gets HTTP 400 and ``{"error": "..."}`` for its index
only, so one bad client never fails the others of its batch, nor the worker.

TorchServe takes a handler module with exactly one class, or a module-level ``handle``
function. This module has two classes (the handler and its error type), so it exposes
``handle``; TorchServe calls it once with ``data=None`` to load the model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ts.context import Context

logger = logging.getLogger(__name__)

MODEL_FILE = "model.py"
MODEL_CLASS = "LinearRegressor"
WEIGHTS_FILE = "model.pth"
N_FEATURES = 2
# A finite JSON number beyond this turns into inf once the model sees it as float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# TorchServe's worker logs at INFO; set this to DEBUG to see the size of each batch.
LOG_LEVEL_ENV = "MODEL_HANDLER_LOG_LEVEL"
_JSON_TYPES = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}

Row = list[float]
Answer = dict[str, Any]


class InvalidRequest(ValueError):
    """A request the model cannot answer; its message is sent back to the client."""


def _reject_constant(name: str) -> float:
    """``json.loads`` hook: Python's json accepts NaN/Infinity, strict JSON does not."""
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON number")


def decode_body(raw: object) -> object:
    """Parse a request body given as bytes, bytearray or str; pass parsed values through.

    TorchServe already parses bodies sent as ``application/json`` (and would accept
    NaN there), so what it hands over parsed is checked by ``parse_row`` all the same.
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("request body is not valid UTF-8") from None
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        raise InvalidRequest("request body is empty")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"request body is not valid JSON: {err.msg}") from None


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_feature(index: int, value: object) -> float:
    """One element of ``data`` as a float32-safe finite float."""
    # bool is an int subclass in Python; JSON true/false are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f'"data"[{index}] must be a number, got {_json_type(value)}')
    if isinstance(value, float) and not math.isfinite(value):
        # json.dumps spells them as the client did: NaN, Infinity, -Infinity.
        raise InvalidRequest(f'"data"[{index}] must be a finite number, got {json.dumps(value)}')
    # Compared before float(): a huge JSON integer would overflow the conversion.
    if abs(value) > FLOAT32_MAX:
        raise InvalidRequest(f'"data"[{index}] is out of the float32 range')
    return float(value)


def parse_row(raw: object) -> Row:
    """The model input of one request body, or ``InvalidRequest`` saying what is wrong."""
    body = decode_body(raw)
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_json_type(body)}")
    if "data" not in body:
        raise InvalidRequest('request body has no "data" field')
    data = body["data"]
    if not isinstance(data, list):
        raise InvalidRequest(
            f'"data" must be an array of {N_FEATURES} numbers, got {_json_type(data)}'
        )
    # Elements first: for [[x1, x2]] "must be a number, got array" says more than a length.
    row = [parse_feature(i, value) for i, value in enumerate(data)]
    if len(row) != N_FEATURES:
        raise InvalidRequest(f'"data" must hold exactly {N_FEATURES} numbers, got {len(row)}')
    return row


def request_body(request: object) -> object:
    """The body of one TorchServe request: under ``data`` or ``body``, raw or parsed.

    A raw body arrives as ``body`` (an empty one too); a multipart field as its own name.
    TorchServe decodes ``application/x-www-form-urlencoded`` bodies (curl -d without a
    Content-Type) as form fields, and a JSON text that way yields no field at all.
    """
    if isinstance(request, dict):
        for key in ("data", "body"):
            if key in request:
                return request[key]
        if request:
            fields = ", ".join(sorted(map(str, request)))
            raise InvalidRequest(f"expected a JSON body, got form fields: {fields}")
    raise InvalidRequest(
        "request body is empty (a form-encoded body arrives empty: "
        "send it with Content-Type: application/json)"
    )


def load_model(model_dir: Path) -> torch.nn.Module:
    """Build the model class of ``model_dir/model.py`` with the weights next to it, on CPU.

    model.py is loaded by path so that no other module named ``model`` on sys.path can
    stand in for the archived one.
    """
    spec = importlib.util.spec_from_file_location("served_model", model_dir / MODEL_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {model_dir / MODEL_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: torch.nn.Module = getattr(module, MODEL_CLASS)()
    state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class LinearRegressorHandler:
    """Loads the model once per worker and answers batches of requests."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    @property
    def initialized(self) -> bool:
        """Whether ``initialize`` has loaded the model."""
        return self.model is not None

    def initialize(self, context: Context) -> None:
        """Load the model from the extracted archive."""
        level = os.environ.get(LOG_LEVEL_ENV, "").upper()
        if level in logging.getLevelNamesMapping():  # an unknown name must not kill the worker
            logger.setLevel(level)
        self.model = load_model(Path(context.system_properties["model_dir"]))
        logger.info("loaded %s from %s", MODEL_CLASS, context.system_properties["model_dir"])

    def predict(self, rows: list[Row]) -> list[float]:
        """One forward pass over all ``rows``; one output per row."""
        if self.model is None:
            raise RuntimeError("handler used before initialize()")
        with torch.inference_mode():
            outputs = self.model(torch.tensor(rows, dtype=torch.float32))
        return outputs.reshape(-1).tolist()

    def observe_inputs(self, rows: list[Row], context: Context) -> None:
        """Seam for live-input statistics: called with the valid rows of every batch.

        Does nothing yet; exporting them to Prometheus goes here.
        """

    def handle(self, data: list[Any], context: Context) -> list[Answer]:
        """Answer every request of ``data``, in order: ``{"output": y}`` or ``{"error": ...}``."""
        answers: list[Answer] = [{} for _ in data]
        rows: list[Row] = []
        indexes: list[int] = []
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            try:
                rows.append(parse_row(request_body(request)))
                indexes.append(idx)
            except InvalidRequest as err:
                answers[idx] = self._reject(context, idx, str(err))
        logger.debug("batch of %d requests, %d valid", len(data), len(rows))
        if rows:
            self.observe_inputs(rows, context)
            for idx, output in zip(indexes, self.predict(rows), strict=True):
                # Inputs within float32 range can still overflow in the weighted sum.
                if math.isfinite(output):
                    answers[idx] = {"output": output}
                else:
                    answers[idx] = self._reject(context, idx, "inputs overflow the model")
        return answers

    @staticmethod
    def _reject(context: Context, idx: int, message: str) -> Answer:
        """Mark request ``idx`` as a 400 and give its error body."""
        context.set_response_status(code=400, phrase="Bad Request", idx=idx)
        return {"error": message}


_service = LinearRegressorHandler()


def handle(data: list[Any] | None, context: Context) -> list[Answer] | None:
    """TorchServe entry point: ``data=None`` once to load, then once per batch."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
