"""The platform's TorchServe handler: ``{"data": [x1, x2]}`` in, ``{"output": y}`` out.

It wraps the model a team delivers (model.py with one ``torch.nn.Module`` class, its
weights, model_config.yaml): the torchserve role archives this module with the model, and
the ``modelserve`` modules it imports (parsing, buckets) next to it. The model's
``handler:`` config section names the input features (their number is the row width),
and optionally the class (``model_class``) when model.py defines several modules.

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
of the idle colour, on /test/predict or a colour's own port, do not. What the model
answers is counted per route too (``OutputStatistics``): a rollout compares a candidate's
answers with production's on the same traffic (shadow) or the same mix (canary).

Loading the model also installs ``worker_reader``'s buffered reader of TorchServe's
worker protocol (the model config's ``buffered_reader: false`` keeps TorchServe's own).

TorchServe takes a handler module with exactly one class, or a module-level ``handle``
function. This module has several classes, so it exposes ``handle``; TorchServe calls
it once with ``data=None`` to load the model.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modelserve import worker_reader
from modelserve.buckets import DEFAULT_EDGES, BucketCounts, le_label
from modelserve.parsing import InvalidInput, data_row

if TYPE_CHECKING:
    from ts.context import Context
    from ts.metrics.metric_cache_abstract import MetricCacheAbstract

logger = logging.getLogger(__name__)

MODEL_FILE = "model.py"
# The weights file when the archive's manifest names none (it names --serialized-file).
WEIGHTS_FILE = "model.pth"
# A finite JSON number beyond this turns into inf once the model sees it as float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# TorchServe's worker logs at INFO; set this to DEBUG to see the size of each batch.
LOG_LEVEL_ENV = "MODEL_HANDLER_LOG_LEVEL"
Row = list[float]
Answer = dict[str, Any]

# Live-input statistics: names of the features in ``data`` order, the upper bounds of
# the buckets (the last bucket is unbounded), and how often they are sent to TorchServe.
# The model's config (model_config.yaml, ``handler:`` section) overrides them; the
# torchserve role writes the platform's edges there (modelserve/bucket_edges.json, the
# drift consumer's too), so live and training histograms compare bucket by bucket.
DEFAULT_FEATURES = ("x1", "x2")
DEFAULT_BUCKET_EDGES = DEFAULT_EDGES
DEFAULT_FLUSH_INTERVAL_S = 1.0
METRIC_PREFIX = "modelserve_input_"
# nginx sets this header on every request it proxies, replacing any a client sent: the
# route's name ("production" for /predict, "test" for /test/predict, "shadow" for a copy
# of a production request sent to a rollout's target). Anything else is counted as
# "direct" (a colour's own port), so a client cannot make up label values.
ROUTE_HEADER = "x-modelserve-route"
PRODUCTION_ROUTE = "production"
ROUTES = (PRODUCTION_ROUTE, "test", "shadow")
DIRECT_ROUTE = "direct"
# The model's answers, counted per route over fixed buckets (the model config's
# ``output_bucket_edges``: where its outputs fall). These defaults only tell gross
# changes apart; a model sets its own.
OUTPUT_METRIC_PREFIX = "modelserve_output_"
DEFAULT_OUTPUT_BUCKET_EDGES = (-100.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 100.0)
# The body of a request that failed for a reason other than its input (logged in full).
INTERNAL_ERROR = "internal error while answering this request"


# What the client sent is wrong: HTTP 400 with the message.
InvalidRequest = InvalidInput


def parse_row(raw: object, n_features: int = len(DEFAULT_FEATURES)) -> Row:
    """The model input of one request body, or ``InvalidRequest`` saying what is wrong."""
    return data_row(raw, n_features, FLOAT32_MAX, "float32")


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
            raise InvalidRequest("not_json", f"expected a JSON body, got form fields: {fields}")
    raise InvalidRequest(
        "empty",
        "request body is empty (a form-encoded body arrives empty: "
        "send it with Content-Type: application/json)",
    )


def route_of(context: Context, idx: int) -> str:
    """The nginx route request ``idx`` came through (``ROUTES``), else ``DIRECT_ROUTE``."""
    headers = context.get_all_request_header(idx)
    # TorchServe hands header names over as the proxy wrote them; HTTP ignores their case.
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == ROUTE_HEADER and value in ROUTES:
            return str(value)
    return DIRECT_ROUTE


def model_class(module: object, name: str | None) -> type[torch.nn.Module]:
    """The class ``name`` of ``module``, or its only ``torch.nn.Module`` subclass."""
    if name:
        found = getattr(module, name, None)
        if not (inspect.isclass(found) and issubclass(found, torch.nn.Module)):
            raise ImportError(f"{MODEL_FILE} has no torch.nn.Module class {name!r}")
        return found
    # Only classes defined in model.py itself, not the ones it imports.
    classes = [
        cls
        for cls in vars(module).values()
        if inspect.isclass(cls)
        and issubclass(cls, torch.nn.Module)
        and cls.__module__ == getattr(module, "__name__", None)
    ]
    if len(classes) != 1:
        names = sorted(cls.__name__ for cls in classes)
        raise ImportError(
            f"{MODEL_FILE} must define exactly one torch.nn.Module class, or the model config "
            f"must name one (handler: model_class); found {names}"
        )
    return classes[0]


def load_model(
    model_dir: Path, class_name: str | None = None, weights_file: str = WEIGHTS_FILE
) -> torch.nn.Module:
    """Build the model class of ``model_dir/model.py`` with its weights, on CPU.

    model.py is loaded by path so that no other module named ``model`` on sys.path can
    stand in for the archived one.
    """
    spec = importlib.util.spec_from_file_location("served_model", model_dir / MODEL_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {model_dir / MODEL_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model: torch.nn.Module = model_class(module, class_name)()
    state = torch.load(model_dir / weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


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
        self.features = tuple(features)
        self.edges = BucketCounts(tuple(edges)).edges  # validated: finite, increasing
        self.labels = tuple(le_label(edge) for edge in (*self.edges, math.inf))
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        n = len(self.features)
        self.count = 0
        self.positive = [0.0] * n
        self.negative = [0.0] * n
        self.squares = [0.0] * n
        self.buckets = [BucketCounts(self.edges) for _ in range(n)]

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
                    self.buckets[i].add(value)
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
        for feature, counts in zip(self.features, buckets, strict=True):
            for label, hits in zip(self.labels, counts.counts, strict=True):
                if hits or every_series:
                    metric.add_or_update(hits, [feature, label])
        return count


class OutputStatistics:
    """Counts of the model's answers per route, over fixed buckets, sent as counters.

    Like ``InputStatistics``: added up in memory, sent by the flusher thread, and
    ``increase()`` over a window gives that window's histogram per route and colour.
    """

    def __init__(self, edges: Sequence[float] = DEFAULT_OUTPUT_BUCKET_EDGES) -> None:
        self.edges = BucketCounts(tuple(edges)).edges  # validated: finite, increasing
        self.labels = tuple(le_label(edge) for edge in (*self.edges, math.inf))
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.buckets = {route: BucketCounts(self.edges) for route in (*ROUTES, DIRECT_ROUTE)}

    def observe(self, route: str, outputs: Sequence[float]) -> None:
        """Add the answers given on ``route`` (one of ``ROUTES`` or ``DIRECT_ROUTE``)."""
        with self._lock:
            counts = self.buckets[route]
            for output in outputs:
                counts.add(output)

    def flush(self, metrics: MetricCacheAbstract, every_series: bool = False) -> int:
        """Send what was added since the last flush; returns the number of answers sent."""
        with self._lock:
            buckets = self.buckets
            self._reset()
        total = sum(sum(counts.counts) for counts in buckets.values())
        if not total and not every_series:
            return 0
        values = metrics.add_metric_to_cache(
            OUTPUT_METRIC_PREFIX + "values_total", "count", ["route"]
        )
        bucket = metrics.add_metric_to_cache(
            OUTPUT_METRIC_PREFIX + "bucket_total", "count", ["route", "le"]
        )
        for route, counts in buckets.items():
            if sum(counts.counts) or every_series:
                values.add_or_update(sum(counts.counts), [route])
            for label, hits in zip(self.labels, counts.counts, strict=True):
                if hits or every_series:
                    bucket.add_or_update(hits, [route, label])
        return total


def start_flusher(
    stats: Sequence[InputStatistics | OutputStatistics],
    metrics: MetricCacheAbstract,
    interval: float,
) -> None:
    """Flush each of ``stats`` every ``interval`` seconds from a daemon thread, for the
    worker's life."""

    def loop() -> None:
        while True:
            time.sleep(interval)
            for each in stats:
                try:
                    each.flush(metrics)
                except Exception:  # a metrics hiccup must never stop the flushing
                    logger.exception("could not send the %s", type(each).__name__)

    threading.Thread(target=loop, name="input-statistics", daemon=True).start()


def input_statistics_settings(config: object) -> tuple[InputStatistics, float]:
    """Statistics and flush interval from the model config's ``handler:`` section.

    A bad setting is logged and the defaults are used: serving goes on without drift
    data for that feature set rather than with a dead worker.
    """
    section = handler_section(config)
    try:
        stats = InputStatistics(
            section.get("input_features", DEFAULT_FEATURES),
            section.get("input_bucket_edges", DEFAULT_BUCKET_EDGES),
        )
        interval = float(section.get("input_metrics_interval_s", DEFAULT_FLUSH_INTERVAL_S))
        if not interval > 0:
            raise ValueError(f"input_metrics_interval_s must be > 0, got {interval}")
    except (TypeError, ValueError) as err:
        logger.error("bad input statistics settings (%s); using the defaults", err)
        return InputStatistics(), DEFAULT_FLUSH_INTERVAL_S
    return stats, interval


def output_statistics_settings(config: object) -> OutputStatistics:
    """Output statistics with the model config's ``output_bucket_edges``; a bad setting is
    logged and the defaults are used."""
    edges = handler_section(config).get("output_bucket_edges", DEFAULT_OUTPUT_BUCKET_EDGES)
    try:
        return OutputStatistics(edges)
    except (TypeError, ValueError) as err:
        logger.error("bad output_bucket_edges (%s); using the defaults", err)
        return OutputStatistics()


def buffered_reader_wanted(config: object) -> bool:
    """The model config's ``buffered_reader`` (default true); a value that is not a
    boolean is logged and the default used."""
    wanted = handler_section(config).get("buffered_reader", True)
    if not isinstance(wanted, bool):
        logger.error("buffered_reader must be true or false, got %r; using true", wanted)
        return True
    return wanted


def handler_section(config: object) -> dict[str, Any]:
    """The ``handler:`` section of the model config, or {} when there is none."""
    section = config.get("handler", {}) if isinstance(config, dict) else {}
    return section if isinstance(section, dict) else {}


def weights_file(manifest: object) -> str:
    """The weights file the archive was built with (its --serialized-file)."""
    model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
    name = model.get("serializedFile") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else WEIGHTS_FILE


class ModelHandler:
    """Loads the model once per worker and answers batches of requests."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.input_statistics = InputStatistics()
        self.output_statistics = OutputStatistics()

    @property
    def initialized(self) -> bool:
        """Whether ``initialize`` has loaded the model."""
        return self.model is not None

    def initialize(self, context: Context) -> None:
        """Load the model from the extracted archive."""
        level = os.environ.get(LOG_LEVEL_ENV, "").upper()
        if level in logging.getLevelNamesMapping():  # an unknown name must not kill the worker
            logger.setLevel(level)
        model_dir = context.system_properties["model_dir"]
        class_name = handler_section(context.model_yaml_config).get("model_class")
        self.model = load_model(Path(model_dir), class_name, weights_file(context.manifest))
        logger.info("loaded %s from %s", type(self.model).__name__, model_dir)
        if buffered_reader_wanted(context.model_yaml_config):
            worker_reader.install()
        self.input_statistics, interval = input_statistics_settings(context.model_yaml_config)
        self.output_statistics = output_statistics_settings(context.model_yaml_config)
        statistics = (self.input_statistics, self.output_statistics)
        if context.metrics is None:  # only outside TorchServe (a bare Context)
            logger.warning("no metrics cache in the context: statistics are not sent")
        else:
            for each in statistics:
                each.flush(context.metrics, every_series=True)
            start_flusher(statistics, context.metrics, interval)

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
        routes: dict[int, str] = {}
        for idx, request in enumerate(data):
            try:
                context.set_response_content_type(idx, "application/json")
                row = parse_row(request_body(request), len(self.input_statistics.features))
                routes[idx] = route_of(context, idx)
                rows.append(row)
                indexes.append(idx)
            except Exception as err:
                answers[idx] = self._error(context, idx, err)
        logger.debug("batch of %d requests, %d valid", len(data), len(rows))
        if not rows:
            return answers
        answered: list[Row] = []
        outputs: dict[str, list[float]] = {}
        for idx, row, output in zip(indexes, rows, self.predict_each(rows), strict=True):
            if not isinstance(output, Exception) and not math.isfinite(output):
                # Inputs within float32 range can still overflow in the weighted sum.
                output = InvalidRequest("not_finite", "inputs overflow the model")
            if isinstance(output, Exception):
                answers[idx] = self._error(context, idx, output)
            else:
                answers[idx] = {"output": output}
                outputs.setdefault(routes[idx], []).append(output)
                if routes[idx] == PRODUCTION_ROUTE:
                    answered.append(row)
        try:
            # What the model answered in production is what it was asked, for drift detection.
            self.input_statistics.observe(answered)
            for route, values in outputs.items():
                self.output_statistics.observe(route, values)
        except Exception:  # the answers are ready: statistics must not fail them
            logger.exception("could not count the inputs and outputs of a batch")
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


_service = ModelHandler()


def handle(data: list[Any] | None, context: Context) -> list[Answer] | None:
    """TorchServe entry point: ``data=None`` once to load, then once per batch."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
