"""A request can only ever fail itself, shown for classes of input (Hypothesis).

Batches mix valid rows with hostile bodies: arbitrary bytes, arbitrary JSON (duplicate
keys, any unicode, NaN and Infinity literals), nesting thousands of levels deep, numbers
of thousands of digits, text in other encodings. Each batch is framed as TorchServe's
frontend sends it to a worker and decoded by TorchServe's own worker code, which parses
``application/json`` bodies itself and hands over the raw bytes when that fails. Every
valid row must get the model's answer, every other request a JSON error on its own index,
and only the rows answered for nginx's production route count for drift.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from io import BytesIO

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_handler import BIAS, WEIGHT, expected, make_context, status
from ts.protocol.otf_message_handler import _retrieve_inference_msg, create_predict_response
from ts.service import Service

from modelserve.handler import ModelHandler

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
JSON = "application/json"
# How TorchServe hands a raw body over: parsed (JSON), as str (text/*) or as bytes.
CONTENT_TYPES = (JSON, "text/plain", "application/octet-stream")
# TorchServe names a raw body "body"; a form field keeps its own name.
PARAMETER_NAMES = ("body", "data")


@dataclass(frozen=True)
class Request:
    """One request as its client sent it."""

    body: bytes
    content_type: str = JSON
    parameter: str = "body"
    route: str | None = None  # nginx's X-Modelserve-Route header, if it came through nginx


# --- what the client sent: strategies ---------------------------------------------------

finite = st.one_of(st.floats(-1e30, 1e30), st.integers(-(10**15), 10**15))
short_text = st.text(max_size=12)


@st.composite
def valid_bodies(draw: st.DrawFn) -> bytes:
    """``{"data": [x1, x2]}``, spelt in any way JSON allows, with ignored extra keys."""
    document: dict[str, object] = {"data": [draw(finite), draw(finite)]}
    document.update(draw(st.dictionaries(short_text.filter(lambda k: k != "data"), short_text)))
    indent = draw(st.sampled_from([None, 0, 2]))
    return json.dumps(document, ensure_ascii=draw(st.booleans()), indent=indent).encode()


def big_number(sign: str, lead: str, zeros: int, fraction: str, exponent: str) -> str:
    return f"{sign}{lead}{'0' * zeros}{fraction}{exponent}"


# Numbers of any size: up to 20,000 digits (Python reads at most 4,300 as an integer)
# and exponents beyond float64.
numbers = st.builds(
    big_number,
    st.sampled_from(["", "-"]),
    st.sampled_from("0123456789"),
    st.integers(0, 20_000),
    st.sampled_from(["", ".5", ".000001"]),
    st.sampled_from(["", "e5", "e-400", "e400", "E+99999", "e-99999"]),
)
any_unicode = st.text(st.characters(), max_size=12) | st.text(
    st.characters(categories=["Cs"]), max_size=3
)
scalars = st.one_of(
    st.none().map(json.dumps),
    st.booleans().map(json.dumps),
    st.integers().map(str),
    st.floats().map(json.dumps),  # NaN, Infinity and -Infinity too: not JSON
    st.builds(json.dumps, any_unicode, ensure_ascii=st.booleans()),
    numbers,
)
keys = st.just("data") | any_unicode


def json_object(pairs: list[tuple[str, str]]) -> str:
    """An object from key/value pairs: the same key may come twice, as JSON text allows."""
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"


json_texts = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(keys, children), max_size=4).map(json_object),
    ),
    max_leaves=12,
)
OPENERS = {"[": "]", '{"data":': "}", '[{"a":': "}]", '{"data":[': "]}"}


def nested(depth: int, opener: str, inner: str, closed: bool) -> str:
    closer = OPENERS[opener] * depth if closed else ""
    return opener * depth + inner + closer


deeply_nested = st.builds(
    nested, st.integers(1, 20_000), st.sampled_from(sorted(OPENERS)), scalars, st.booleans()
)
values = json_texts | deeply_nested | numbers
row_shaped = st.one_of(
    st.builds(lambda a, b: f'{{"data": [{a}, {b}]}}', values, values),
    st.builds(lambda a, b: f'{{"data": [{a}, 0.6], "data": {b}}}', values, values),
    st.builds(lambda value: f'{{"data": {value}}}', values),
)
hostile_texts = json_texts | deeply_nested | row_shaped


def spliced(text: str, at: int, junk: bytes) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return raw[:at] + junk + raw[at:]


hostile_bodies = st.one_of(
    # Lone surrogates pass as their (invalid) UTF-8 bytes.
    hostile_texts.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=512),
    row_shaped.map(lambda text: text.encode("utf-16", "surrogatepass")),
    st.builds(spliced, row_shaped, st.integers(0, 40), st.binary(min_size=1, max_size=4)),
)


def requests_of(bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Request]:
    return st.builds(
        Request,
        bodies,
        st.sampled_from(CONTENT_TYPES),
        st.sampled_from(PARAMETER_NAMES),
        st.sampled_from([None, "production", "test"]),
    )


# --- what the contract says each request gets (files/openapi.yaml) ----------------------


class Ambiguous(Exception):
    """An output within rounding of float32's limit: the test does not judge it."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def as_handed_over(request: Request) -> object:
    """The document in a body as TorchServe and the handler read it, or ValueError."""
    try:
        text = request.body.decode("utf-8")
        if request.content_type == JSON:
            # TorchServe parses JSON bodies itself, with Python's json (NaN allowed);
            # a JSON string it hands over is read as JSON text once more.
            document = json.loads(text)
            if not isinstance(document, str):
                return document
            text = document
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise ValueError(err) from None


def expected_row(request: Request) -> list[float] | None:
    """The row a request asks the model for, or None if it must be refused."""
    try:
        document = as_handed_over(request)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        return None
    row = document["data"]
    if len(row) != 2 or any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
        return None
    # The range first: math.isfinite cannot take an integer beyond float64.
    if any(abs(v) > FLOAT32_MAX or not math.isfinite(v) for v in row):
        return None
    # Past float32's range the model answers inf, which the handler refuses.
    terms = [WEIGHT[0] * row[0], WEIGHT[1] * row[1], expected(*row)]
    largest = max(abs(term) for term in terms)
    if abs(largest - FLOAT32_MAX) <= 1e-4 * FLOAT32_MAX:
        raise Ambiguous
    return [float(v) for v in row] if largest < FLOAT32_MAX else None


# --- TorchServe's side: the frame its frontend sends, decoded by its worker's code -----


def _sized(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def framed(requests: list[Request]) -> bytes:
    """A batch as TorchServe's frontend writes it to the worker's socket."""
    frame = b""
    for number, request in enumerate(requests):
        frame += _sized(f"request-{number}".encode())
        if request.route is not None:
            frame += _sized(b"X-Modelserve-Route") + _sized(request.route.encode())
        frame += struct.pack("!i", -1)
        parameter = _sized(request.parameter.encode()) + _sized(request.content_type.encode())
        frame += parameter + _sized(request.body) + struct.pack("!i", -1)
    return frame + struct.pack("!i", -1)


class Socket:
    """The worker's end of the frontend's socket, holding one frame."""

    def __init__(self, frame: bytes) -> None:
        self._buffer = BytesIO(frame)

    def recv(self, size: int) -> bytes:
        return self._buffer.read(size)


def serve(service: ModelHandler, requests: list[Request]) -> tuple[list, object]:
    """Decode the batch with TorchServe's worker code, then call the handler with it."""
    batch = _retrieve_inference_msg(Socket(framed(requests)))
    processors, data, request_ids = Service.retrieve_data_for_inference(batch)
    context = make_context(len(requests))
    context.request_processor = processors
    answers = service.handle(data, context)
    # What the worker sends back: 200 for the batch, every request with its own status.
    assert create_predict_response(answers, request_ids, "Prediction success", 200, context)[
        :4
    ] == struct.pack("!i", 200)
    return answers, context


def check(requests: list[Request], answers: list, context: object) -> int | None:
    """Check each answer; return how many rows production asked, None if unsure."""
    assert len(answers) == len(requests)
    production: int | None = 0
    for idx, request in enumerate(requests):
        try:
            row = expected_row(request)
        except Ambiguous:
            production = None
            continue
        answer = answers[idx]
        assert context.get_response_content_type(idx) == JSON
        # allow_nan=False: what TorchServe sends back must be strict JSON.
        assert json.loads(json.dumps(answer, allow_nan=False)) == answer
        if row is None:
            assert status(context, idx) == 400, (request, answer)
            assert set(answer) == {"error"} and answer["error"], (request, answer)
        else:
            assert status(context, idx) == 200, (request, answer)
            scale = abs(WEIGHT[0] * row[0]) + abs(WEIGHT[1] * row[1]) + abs(BIAS)
            assert abs(answer["output"] - expected(*row)) <= 1e-5 * scale + 1e-6, (request, answer)
            if production is not None and request.route == "production":
                production += 1
    return production


@pytest.fixture(scope="module")
def service() -> ModelHandler:
    loaded = ModelHandler()
    loaded.initialize(make_context(1))
    return loaded


@given(
    valid=st.lists(requests_of(valid_bodies()), min_size=1, max_size=4),
    hostile=st.lists(requests_of(hostile_bodies), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_valid_rows_get_their_answer_whatever_else_is_in_the_batch(
    service: ModelHandler, valid: list[Request], hostile: list[Request], order
) -> None:
    requests = valid + hostile
    order.shuffle(requests)
    counted_before = service.input_statistics.count
    answers, context = serve(service, requests)
    production = check(requests, answers, context)
    # Drift counts the rows answered in production, nothing else.
    if production is not None:
        assert service.input_statistics.count - counted_before == production
    assert sum(status(context, idx) == 200 for idx in range(len(requests))) >= len(valid)


@given(st.lists(requests_of(hostile_bodies), min_size=1, max_size=8))
def test_each_hostile_request_gets_its_own_400(
    service: ModelHandler, requests: list[Request]
) -> None:
    answers, context = serve(service, requests)
    check(requests, answers, context)


@given(st.binary(max_size=2048), st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes_never_fail_the_reference_row(
    service: ModelHandler, body: bytes, content_type: str
) -> None:
    requests = [Request(b'{"data": [0.2, 0.6]}'), Request(body, content_type)]
    answers, context = serve(service, requests)
    check(requests, answers, context)
    assert status(context, 0) == 200
