"""The TorchServe handler, driven with TorchServe's own Context as its worker builds it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MODEL_DIR
from ts.context import Context, RequestProcessor
from ts.protocol import otf_message_handler

from modelserve import handler
from modelserve.handler import InvalidRequest, ModelHandler, parse_row
from modelserve.worker_reader import BufferedReader

REFERENCE_BODY = b'{"data": [0.2, 0.6]}'
REFERENCE_OUTPUT = 0.6496530771255493
TOLERANCE = 1e-6
WEIGHT = (0.890637, 1.052189)
BIAS = -0.159788

# Each class of malformed body, raw as it may reach the handler, and a word the error
# message must contain so a client can tell what is wrong.
MALFORMED: dict[str, tuple[object, str]] = {
    "not json": (b"this is not json", "not valid JSON"),
    "not utf-8": (b'{"data": [0.2, "\xff"]}', "UTF-8"),
    "empty body": (b"", "empty"),
    "blank body": (b"  \n", "empty"),
    "not an object": (b"[0.2, 0.6]", "JSON object"),
    "a json string": (b'"0.2, 0.6"', "JSON object"),
    "missing data": (b'{"input": [0.2, 0.6]}', '"data" field'),
    "data not a list": (b'{"data": 0.2}', "array of 2 numbers, got number"),
    "data is an object": ({"data": {"a": 0.2, "b": 0.6}}, "got object"),
    "no values": (b'{"data": []}', "exactly 2 numbers, got 0"),
    "too few values": (b'{"data": [0.2]}', "exactly 2 numbers, got 1"),
    "too many values": (b'{"data": [0.2, 0.6, 1.0]}', "exactly 2 numbers, got 3"),
    "strings": (b'{"data": ["0.2", "0.6"]}', "got string"),
    "null": (b'{"data": [null, 0.6]}', "got null"),
    "nested list": (b'{"data": [[0.2, 0.6]]}', "got array"),
    "nested pair": (b'{"data": [[0.2], [0.6]]}', "got array"),
    "booleans": (b'{"data": [true, false]}', "got boolean"),
    "one boolean": (b'{"data": [0.2, true]}', '"data"[1]'),
    # Python's json reads these literals; raw bodies are parsed as strict JSON instead.
    "NaN literal": (b'{"data": [NaN, 0.6]}', "NaN is not a JSON number"),
    "Infinity literal": (b'{"data": [Infinity, 0.6]}', "Infinity is not a JSON number"),
    "-Infinity literal": (b'{"data": [0.2, -Infinity]}', "-Infinity is not a JSON number"),
    "NaN outside data": (b'{"data": [0.2, 0.6], "id": NaN}', "NaN is not a JSON number"),
    "number overflowing float64": (b'{"data": [1e400, 0.6]}', "finite"),
    "number overflowing float32": (b'{"data": [1e39, 0.6]}', "float32"),
    "huge integer": (b'{"data": [1' + b"0" * 400 + b", 0.6]}", "float32"),
    # TorchServe parses application/json bodies itself, with Python's lenient json.
    "parsed NaN": ({"data": [math.nan, 0.6]}, "finite number, got NaN"),
    "parsed Infinity": ({"data": [0.2, -math.inf]}, "finite number, got -Infinity"),
    "parsed list": ([0.2, 0.6], "JSON object"),
}


def expected(x1: float, x2: float) -> float:
    """The model's answer computed in float64 from the delivered parameters."""
    return WEIGHT[0] * x1 + WEIGHT[1] * x2 + BIAS


# What nginx's /predict adds to every request it proxies (roles/nginx).
PRODUCTION = {"X-Modelserve-Route": "production"}


def make_context(batch_size: int, headers: dict[str, str] | None = None) -> Context:
    """A real TorchServe Context with one RequestProcessor per request, as Service.predict;
    each request with the given HTTP headers."""
    context = Context("model", str(MODEL_DIR), {}, 8, None, "0.12.0")
    context.request_processor = [RequestProcessor(dict(headers or {})) for _ in range(batch_size)]
    return context


def status(context: Context, idx: int) -> int:
    return context.get_response_status(idx)[0]


class ForwardSpy(torch.nn.Module):
    """Wraps the model and records the input of each forward pass."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.inner(x)


@pytest.fixture(scope="module")
def loaded() -> ModelHandler:
    service = ModelHandler()
    service.initialize(make_context(1))
    return service


@pytest.fixture
def spied(loaded: ModelHandler) -> ModelHandler:
    service = ModelHandler()
    service.model = ForwardSpy(loaded.model)
    return service


def run(
    service: ModelHandler,
    requests: list[object],
    headers: dict[str, str] | None = None,
) -> tuple[list, Context]:
    context = make_context(len(requests), headers)
    return service.handle(requests, context), context


# --- pure validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        REFERENCE_BODY,
        bytearray(REFERENCE_BODY),
        REFERENCE_BODY.decode(),
        {"data": [0.2, 0.6]},
        b'{"data": [0.2, 0.6], "id": "extra keys are ignored"}',
        b' \n{"data":[0.2,0.6]}\n',
    ],
)
def test_parse_row_accepts_every_form_of_a_valid_body(raw: object) -> None:
    assert parse_row(raw) == [0.2, 0.6]


def test_parse_row_accepts_integers_and_negatives_as_floats() -> None:
    row = parse_row(b'{"data": [-3, 0]}')
    assert row == [-3.0, 0.0]
    assert all(type(value) is float for value in row)


@pytest.mark.parametrize(("raw", "words"), MALFORMED.values(), ids=MALFORMED.keys())
def test_parse_row_rejects_malformed_bodies_with_a_clear_message(raw: object, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_row(raw)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        # What TorchServe 0.12 hands over for `curl -d '{"data": [0.2, 0.6]}'` (form-encoded).
        ({}, "Content-Type: application/json"),
        ({"a": bytearray(b"1"), "b": bytearray(b"2")}, "form fields: a, b"),
        (None, "empty"),
    ],
    ids=["json sent as a form", "form fields", "none"],
)
def test_a_request_without_body_gets_400_saying_why(
    loaded: ModelHandler, request_: object, words: str
) -> None:
    answers, context = run(loaded, [request_])
    assert status(context, 0) == 400
    assert words in answers[0]["error"]


# --- handle(): one answer per request, in order -----------------------------------------


@pytest.mark.parametrize("key", ["body", "data"])
def test_reference_request_gets_the_reference_output(loaded: ModelHandler, key: str) -> None:
    answers, context = run(loaded, [{key: REFERENCE_BODY}])
    assert status(context, 0) == 200
    assert context.get_response_content_type(0) == "application/json"
    assert set(answers[0]) == {"output"}
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE
    assert abs(answers[0]["output"] - expected(0.2, 0.6)) <= TOLERANCE


def test_valid_rows_of_a_batch_go_through_one_forward_pass(spied: ModelHandler) -> None:
    rows = [[0.2, 0.6], [1.0, -1.0], [0, 0], [12.5, 3.25], [-0.7, 0.01]]
    answers, context = run(spied, [{"body": json.dumps({"data": row})} for row in rows])
    assert len(spied.model.inputs) == 1
    assert spied.model.inputs[0].shape == (len(rows), 2)
    for idx, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        assert status(context, idx) == 200
        assert abs(answer["output"] - expected(*row)) <= TOLERANCE


def test_mixed_batch_answers_each_request_with_its_own_status(
    spied: ModelHandler,
) -> None:
    requests = [
        {"body": REFERENCE_BODY},
        {"body": b"this is not json"},
        {"body": bytearray(b'{"data": [1.0, 2.0]}')},
        {"body": {"data": [math.nan, 0.6]}},
        {"body": b""},
        {"data": {"data": [-1, 1]}},
        {"body": b'{"data": [true, false]}'},
    ]
    answers, context = run(spied, requests)

    assert len(answers) == len(requests)
    assert [status(context, i) for i in range(len(requests))] == [200, 400, 200, 400, 400, 200, 400]
    assert context.get_response_status(1) == (400, "Bad Request")
    assert abs(answers[0]["output"] - expected(0.2, 0.6)) <= TOLERANCE
    assert abs(answers[2]["output"] - expected(1.0, 2.0)) <= TOLERANCE
    assert abs(answers[5]["output"] - expected(-1, 1)) <= TOLERANCE
    assert "not valid JSON" in answers[1]["error"]
    assert "finite" in answers[3]["error"]
    assert "empty" in answers[4]["error"]
    assert "boolean" in answers[6]["error"]
    # Only the three valid rows reach the model, together.
    assert [t.shape for t in spied.model.inputs] == [(3, 2)]
    assert all(context.get_response_content_type(i) == "application/json" for i in range(7))


@pytest.mark.parametrize(("raw", "words"), MALFORMED.values(), ids=MALFORMED.keys())
def test_each_malformed_request_gets_400_while_its_neighbours_get_200(
    loaded: ModelHandler, raw: object, words: str
) -> None:
    answers, context = run(loaded, [{"body": REFERENCE_BODY}, {"body": raw}, {"data": "{}"}])
    assert [status(context, i) for i in range(3)] == [200, 400, 400]
    assert words in answers[1]["error"]
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE


def test_an_all_invalid_batch_never_calls_the_model(spied: ModelHandler) -> None:
    answers, context = run(spied, [{"body": b"[]"}, {"body": b"{}"}])
    assert spied.model.inputs == []
    assert [status(context, i) for i in range(2)] == [400, 400]
    assert all("error" in answer for answer in answers)


def test_inputs_that_overflow_the_weighted_sum_get_400(loaded: ModelHandler) -> None:
    # Each value fits float32; their weighted sum does not.
    answers, context = run(loaded, [{"body": b'{"data": [3e38, 3e38]}'}, {"body": REFERENCE_BODY}])
    assert [status(context, i) for i in range(2)] == [400, 200]
    assert "overflow" in answers[0]["error"]


def test_every_answer_is_strict_json(loaded: ModelHandler) -> None:
    requests = [{"body": raw} for raw, _ in MALFORMED.values()] + [{"body": REFERENCE_BODY}]
    answers, _ = run(loaded, requests)
    for answer in answers:
        # allow_nan=False: TorchServe json-dumps dicts, and NaN would not be JSON.
        assert json.loads(json.dumps(answer, allow_nan=False)) == answer
        assert set(answer) in ({"output"}, {"error"})


def test_only_answered_rows_reach_the_input_statistics(loaded: ModelHandler) -> None:
    service = ModelHandler()
    service.model = loaded.model
    requests = [
        {"body": b'{"data": [1, 2]}'},
        {"body": b"nope"},
        {"body": b'{"data": [3e38, 3e38]}'},  # 400: overflows the weighted sum
        {"body": REFERENCE_BODY},
    ]
    run(service, requests, PRODUCTION)
    stats = service.input_statistics
    assert stats.count == 2
    assert stats.positive == pytest.approx([1.2, 2.6])
    assert stats.squares == pytest.approx([1.04, 4.36])


class PoisonedModel(torch.nn.Module):
    """The model, except that any forward pass holding the row ``POISON`` raises."""

    POISON = (13.0, 13.0)

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.passes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append(len(x))
        if (x == torch.tensor(self.POISON)).all(dim=1).any():
            raise RuntimeError("poisoned row")
        return self.inner(x)


def test_a_row_that_breaks_the_forward_pass_fails_alone_with_500(
    loaded: ModelHandler,
) -> None:
    service = ModelHandler()
    service.model = PoisonedModel(loaded.model)
    poison = json.dumps({"data": PoisonedModel.POISON})
    requests = [{"body": REFERENCE_BODY}, {"body": poison}, {"body": b'{"data": [1, 2]}'}]
    answers, context = run(service, requests, PRODUCTION)
    assert [status(context, i) for i in range(3)] == [200, 500, 200]
    assert answers[1] == {"error": handler.INTERNAL_ERROR}
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE
    assert abs(answers[2]["output"] - expected(1, 2)) <= TOLERANCE
    # The batch's pass failed, then each row went through alone.
    assert service.model.passes == [3, 1, 1, 1]
    # Only what was answered is counted for drift.
    assert service.input_statistics.count == 2


def test_an_unexpected_error_on_one_request_is_its_own_500(
    loaded: ModelHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = handler.request_body

    def broken_for_one(request: object) -> object:
        if request == {"body": b"boom"}:
            raise KeyError("a bug in the handler")
        return real(request)

    monkeypatch.setattr(handler, "request_body", broken_for_one)
    answers, context = run(loaded, [{"body": b"boom"}, {"body": REFERENCE_BODY}, {"body": b"[]"}])
    assert [status(context, i) for i in range(3)] == [500, 200, 400]
    assert context.get_response_status(0) == (500, "Internal Server Error")
    assert answers[0] == {"error": handler.INTERNAL_ERROR}
    assert abs(answers[1]["output"] - REFERENCE_OUTPUT) <= TOLERANCE


def test_failing_input_statistics_do_not_fail_the_answers(
    loaded: ModelHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = ModelHandler()
    service.model = loaded.model

    def broken(rows: object) -> None:
        raise RuntimeError("statistics broken")

    monkeypatch.setattr(service.input_statistics, "observe", broken)
    answers, context = run(service, [{"body": REFERENCE_BODY}])
    assert status(context, 0) == 200
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests"),
        (b'{"data": [1' + b"0" * 4300 + b", 0.6]}", "too many digits"),
        (b'{"data": [-' + b"9" * 10_000 + b", 0.6]}", "too many digits"),
    ],
    ids=["5000 levels deep", "4301 digits", "10001 digits"],
)
def test_bodies_python_json_cannot_read_get_400(
    loaded: ModelHandler, raw: bytes, words: str
) -> None:
    # TorchServe's own parse fails on them too and hands the raw bytes over.
    answers, context = run(loaded, [{"body": raw}, {"body": REFERENCE_BODY}])
    assert [status(context, i) for i in range(2)] == [400, 200]
    assert words in answers[0]["error"]


@pytest.mark.parametrize(
    ("headers", "counted"),
    [
        (PRODUCTION, 2),
        ({"x-modelserve-route": "production"}, 2),  # header names are case-insensitive
        ({"X-Modelserve-Route": "test"}, 0),  # nginx's /test/predict: the idle colour
        ({}, 0),  # a colour's own port: swap.yml's smoke test
        ({"X-Modelserve-Route": "Production"}, 0),
    ],
    ids=["production", "lower-case name", "test route", "no header", "other value"],
)
def test_only_production_requests_count_for_drift(
    loaded: ModelHandler, headers: dict[str, str], counted: int
) -> None:
    service = ModelHandler()
    service.model = loaded.model
    answers, context = run(
        service, [{"body": REFERENCE_BODY}, {"body": b'{"data": [1, 2]}'}], headers
    )
    # Every route gets its answers; only production's rows reach the statistics.
    assert [status(context, i) for i in range(2)] == [200, 200]
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE
    assert service.input_statistics.count == counted


@pytest.mark.parametrize(
    ("headers", "route"),
    [
        (PRODUCTION, "production"),
        ({"X-Modelserve-Route": "test"}, "test"),
        ({"x-modelserve-route": "shadow"}, "shadow"),  # a rollout's mirrored copy
        ({}, "direct"),
        ({"X-Modelserve-Route": "made-up"}, "direct"),  # no label value a client invents
    ],
)
def test_answers_are_counted_per_route(
    loaded: ModelHandler, headers: dict[str, str], route: str
) -> None:
    service = ModelHandler()
    service.model = loaded.model
    bodies = [{"body": REFERENCE_BODY}, {"body": b'{"data": [1, 2]}'}, {"body": b"[1]"}]
    run(service, bodies, headers)
    # The two answered requests, not the refused one, under their route only.
    counted = {name: sum(c.counts) for name, c in service.output_statistics.buckets.items()}
    assert counted == {name: (2 if name == route else 0) for name in counted}


# --- the module-level entry point TorchServe calls --------------------------------------


def test_entry_point_loads_on_the_none_call_then_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ModelHandler()
    monkeypatch.setattr(handler, "_service", fresh)
    assert handler.handle(None, make_context(0)) is None
    assert fresh.initialized
    context = make_context(2)
    answers = handler.handle([{"body": REFERENCE_BODY}, {"body": b"[1, 2]"}], context)
    assert answers is not None
    assert abs(answers[0]["output"] - REFERENCE_OUTPUT) <= TOLERANCE
    assert [status(context, i) for i in range(2)] == [200, 400]


def test_handler_module_has_the_entry_point_torchserve_looks_for() -> None:
    # TorchServe's loader prefers a module-level `handle`; without it, it would demand
    # exactly one class in the module, and this one has two.
    assert callable(getattr(handler, "handle", None))


@pytest.mark.parametrize(
    ("handler_config", "installed"),
    [({}, True), ({"buffered_reader": True}, True), ({"buffered_reader": False}, False),
     ({"buffered_reader": "no"}, True)],
)  # fmt: skip
def test_loading_installs_the_buffered_worker_reader_unless_configured_off(
    handler_config: dict[str, object], installed: bool
) -> None:
    context = make_context(1)
    context.model_yaml_config = {"handler": handler_config}
    ModelHandler().initialize(context)
    assert isinstance(otf_message_handler._retrieve_buffer, BufferedReader) is installed
