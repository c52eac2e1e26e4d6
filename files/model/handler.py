"""TorchServe handler for LinearRegressor: ``{"data": [x1, x2]}`` in, ``{"output": y}`` out.

Every request of a batch is decoded, validated and answered on its own: a request can only
ever fail itself. What is wrong with what the client sent gets HTTP 400 and
``{"error": "..."}`` for its index only; any other exception while handling one request
gets a 500 for that request alone. Nothing escapes ``handle``: TorchServe would answer every
request of the batch with 503. Valid rows go through the model in one forward pass; if that
pass fails, each row goes through alone, so a row that breaks the batch fails by itself.

What production is asked is exported for drift detection (``InputStatistics``): per
feature, counters of values, positive and negative sums, sum of squares and per-bucket
counts, which Prometheus adds up across workers and colours. Only rows that came through
nginx's production route count (its ``X-Modelserve-Route`` header): smoke and load tests
of the idle colour, on /test/predict or a colour's own port, do not.

TorchServe takes a handler module with exactly one class, or a module-level ``handle``
function. This module has several classes, so it exposes ``handle``; TorchServe calls
it once with ``data=None`` to load the model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ts.context import Context
    from ts.metrics.metric_cache_abstract import MetricCacheAbstract

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

# Live-input statistics: names of the features in ``data`` order, the upper bounds of
# the buckets (the last bucket is unbounded), and how often they are sent to TorchServe.
# The model's config (model_config.yaml, ``handler:`` section) overrides them; the edges
# must be the drift consumer's, so live and training histograms compare bucket by bucket.
DEFAULT_FEATURES = ("x1", "x2")
DEFAULT_BUCKET_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_FLUSH_INTERVAL_S = 1.0
METRIC_PREFIX = "modelserve_input_"
# nginx sets this header on every request it proxies, replacing any a client sent: the
# route's name ("production" for /predict, "test" for /test/predict).
ROUTE_HEADER = "x-modelserve-route"
PRODUCTION_ROUTE = "production"
# The body of a request that failed for a reason other than its input (logged in full).
INTERNAL_ERROR = "internal error while answering this request"


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
    except InvalidRequest:
        raise
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"request body is not valid JSON: {err.msg}") from None
    except RecursionError:
        # json's scanner recurses once per array or object level.
        raise InvalidRequest("request body nests arrays or objects too deeply") from None
    except ValueError:
        # Python reads no integer of more than sys.get_int_max_str_digits() (4300) digits.
        raise InvalidRequest("request body has an integer with too many digits") from None


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


def from_production(context: Context, idx: int) -> bool:
    """Whether request ``idx`` came through nginx's production route (/predict)."""
    headers = context.get_all_request_header(idx)
    # TorchServe hands header names over as the proxy wrote them; HTTP ignores their case.
    return any(
        isinstance(name, str) and name.lower() == ROUTE_HEADER and value == PRODUCTION_ROUTE
        for name, value in headers.items()
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


def bucket_label(edge: float) -> str:
    """A bucket's upper bound as Prometheus clients write ``le`` (0.1 -> "0.1", 1 -> "1.0")."""
    return "+Inf" if edge == math.inf else repr(float(edge))


class InputStatistics:
    """Per-feature sums of the valid inputs, sent to TorchServe's metrics as counters.

    Counters, not gauges: each worker adds its own increments, TorchServe's frontend adds
    up its workers, Prometheus sums the colours, and ``increase()`` over any window gives
    that window's count, mean (sum / count), variance (squares / count - mean^2) and
    histogram. A counter cannot go down, so the sum is kept as a positive and a negative
    part. Rows are added up in memory and sent at most once per interval by a background
    thread: a metric is one log line the frontend parses, too costly per request.
    """

    def __init__(
        self,
        features: Sequence[str] = DEFAULT_FEATURES,
        edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
    ) -> None:
        if not features or len(set(features)) != len(features):
            raise ValueError(f"input features must be distinct names, got {list(features)}")
        bounds = [float(edge) for edge in edges]
        if not bounds or any(not math.isfinite(b) for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"bucket edges must be finite and increasing, got {list(edges)}")
        self.features = tuple(features)
        self.edges = tuple(bounds)
        self.labels = tuple(bucket_label(edge) for edge in (*bounds, math.inf))
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        n = len(self.features)
        self.count = 0
        self.positive = [0.0] * n
        self.negative = [0.0] * n
        self.squares = [0.0] * n
        self.buckets = [[0] * len(self.labels) for _ in range(n)]

    def observe(self, rows: Sequence[Row]) -> None:
        """Add valid rows (one value per feature each)."""
        with self._lock:
            for row in rows:
                for i, value in enumerate(row):
                    if value >= 0:
                        self.positive[i] += value
                    else:
                        self.negative[i] -= value
                    self.squares[i] += value * value
                    # le semantics: a value equal to an edge belongs to that edge's bucket.
                    self.buckets[i][bisect_left(self.edges, value)] += 1
            self.count += len(rows)

    def flush(self, metrics: MetricCacheAbstract, every_series: bool = False) -> int:
        """Send what was added since the last flush; returns the number of rows sent.

        ``every_series`` also sends the zero increments, which creates every series at 0:
        done once when the worker starts, because Prometheus's ``increase()`` cannot count
        the first value of a series it has never seen at a lower one.
        """
        with self._lock:
            count, positive, negative = self.count, self.positive, self.negative
            squares, buckets = self.squares, self.buckets
            self._reset()
        if not count and not every_series:
            return 0
        per_feature = {
            "values_total": [count] * len(self.features),
            "sum_positive_total": positive,
            "sum_negative_total": negative,
            "sum_squares_total": squares,
        }
        for suffix, values in per_feature.items():
            metric = metrics.add_metric_to_cache(METRIC_PREFIX + suffix, "count", ["feature"])
            for feature, value in zip(self.features, values, strict=True):
                if value or every_series:
                    metric.add_or_update(value, [feature])
        metric = metrics.add_metric_to_cache(
            METRIC_PREFIX + "bucket_total", "count", ["feature", "le"]
        )
        for feature, hits_per_bucket in zip(self.features, buckets, strict=True):
            for label, hits in zip(self.labels, hits_per_bucket, strict=True):
                if hits or every_series:
                    metric.add_or_update(hits, [feature, label])
        return count


def start_flusher(stats: InputStatistics, metrics: MetricCacheAbstract, interval: float) -> None:
    """Flush ``stats`` every ``interval`` seconds from a daemon thread, for the worker's life."""

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                stats.flush(metrics)
            except Exception:  # a metrics hiccup must never stop the flushing
                logger.exception("could not send the input statistics")

    threading.Thread(target=loop, name="input-statistics", daemon=True).start()


def input_statistics_settings(config: object) -> tuple[InputStatistics, float]:
    """Statistics and flush interval from the model config's ``handler:`` section.

    A bad setting is logged and the defaults are used: serving goes on without drift
    data for that feature set rather than with a dead worker.
    """
    section = config.get("handler", {}) if isinstance(config, dict) else {}
    section = section if isinstance(section, dict) else {}
    try:
        stats = InputStatistics(
            section.get("input_features", DEFAULT_FEATURES),
            section.get("input_bucket_edges", DEFAULT_BUCKET_EDGES),
        )
        if len(stats.features) != N_FEATURES:
            raise ValueError(f"input_features must name {N_FEATURES} features")
        interval = float(section.get("input_metrics_interval_s", DEFAULT_FLUSH_INTERVAL_S))
        if not interval > 0:
            raise ValueError(f"input_metrics_interval_s must be > 0, got {interval}")
    except (TypeError, ValueError) as err:
        logger.error("bad input statistics settings (%s); using the defaults", err)
        return InputStatistics(), DEFAULT_FLUSH_INTERVAL_S
    return stats, interval


class LinearRegressorHandler:
    """Loads the model once per worker and answers batches of requests."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.input_statistics = InputStatistics()

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
        self.input_statistics, interval = input_statistics_settings(context.model_yaml_config)
        if context.metrics is None:  # only outside TorchServe (a bare Context)
            logger.warning("no metrics cache in the context: input statistics are not sent")
        else:
            self.input_statistics.flush(context.metrics, every_series=True)
            start_flusher(self.input_statistics, context.metrics, interval)

    def predict(self, rows: list[Row]) -> list[float]:
        """One forward pass over all ``rows``; one output per row."""
        if self.model is None:
            raise RuntimeError("handler used before initialize()")
        with torch.inference_mode():
            outputs = self.model(torch.tensor(rows, dtype=torch.float32))
        values = [float(value) for value in outputs.reshape(-1).tolist()]
        if len(values) != len(rows):
            raise RuntimeError(f"the model gave {len(values)} outputs for {len(rows)} rows")
        return values

    def predict_each(self, rows: list[Row]) -> list[float | Exception]:
        """The output of each row, or the exception that row alone raises.

        One forward pass for the batch; only if it fails, one pass per row, so that a row
        that breaks the batch fails by itself and the others are answered.
        """
        try:
            return list(self.predict(rows))
        except Exception:
            logger.exception("forward pass over %d rows failed; retrying row by row", len(rows))
        outputs: list[float | Exception] = []
        for row in rows:
            try:
                outputs.append(self.predict([row])[0])
            except Exception as err:
                outputs.append(err)
        return outputs

    def handle(self, data: list[Any], context: Context) -> list[Answer]:
        """Answer every request of ``data``, in order: ``{"output": y}`` or ``{"error": ...}``."""
        answers: list[Answer] = [{} for _ in data]
        rows: list[Row] = []
        indexes: list[int] = []
        production: set[int] = set()
        for idx, request in enumerate(data):
            try:
                context.set_response_content_type(idx, "application/json")
                row = parse_row(request_body(request))
                counted = from_production(context, idx)
                rows.append(row)
                indexes.append(idx)
                if counted:
                    production.add(idx)
            except Exception as err:
                answers[idx] = self._error(context, idx, err)
        logger.debug("batch of %d requests, %d valid", len(data), len(rows))
        if not rows:
            return answers
        answered: list[Row] = []
        for idx, row, output in zip(indexes, rows, self.predict_each(rows), strict=True):
            if not isinstance(output, Exception) and not math.isfinite(output):
                # Inputs within float32 range can still overflow in the weighted sum.
                output = InvalidRequest("inputs overflow the model")
            if isinstance(output, Exception):
                answers[idx] = self._error(context, idx, output)
            else:
                answers[idx] = {"output": output}
                if idx in production:
                    answered.append(row)
        try:
            # What the model answered in production is what it was asked, for drift detection.
            self.input_statistics.observe(answered)
        except Exception:  # the answers are ready: statistics must not fail them
            logger.exception("could not count the inputs of a batch")
        return answers

    @staticmethod
    def _error(context: Context, idx: int, err: Exception) -> Answer:
        """Request ``idx``'s own error: 400 for what its client sent, 500 for anything else."""
        if isinstance(err, InvalidRequest):
            code, phrase, message = 400, "Bad Request", str(err)
        else:
            logger.error("request %d of a batch failed", idx, exc_info=err)
            code, phrase, message = 500, "Internal Server Error", INTERNAL_ERROR
        context.set_response_status(code=code, phrase=phrase, idx=idx)
        return {"error": message}


_service = LinearRegressorHandler()


def handle(data: list[Any] | None, context: Context) -> list[Answer] | None:
    """TorchServe entry point: ``data=None`` once to load, then once per batch."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
