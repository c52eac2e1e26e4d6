"""Strict JSON and row parsing, shared by the handler (request bodies) and the drift
consumer (Kafka messages): one definition of what a valid row is on both sides.

Strict: NaN and Infinity literals, which Python's json accepts, are refused; so are
values too deeply nested or integers too long for Python to read. Every refusal is an
``InvalidInput`` whose ``reason`` is one of ``REASONS`` (the consumer counts by it) and
whose message says what is wrong (the handler sends it back with HTTP 400).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

REASONS: tuple[str, ...] = (
    "empty",
    "not_json",
    "not_object",
    "missing_feature",
    "not_numeric",
    "not_finite",
)
_JSON_TYPES = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


class InvalidInput(ValueError):
    """Input that is not a valid row; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def decode_json(raw: bytes | bytearray | str | None, subject: str = "request body") -> object:
    """The JSON document of ``raw`` (UTF-8 bytes or text), strictly.

    ``subject`` names the input in the messages ("request body", "message value").
    """

    def reject_constant(name: str) -> float:
        """``json.loads`` hook: Python's json accepts NaN/Infinity, strict JSON does not."""
        raise InvalidInput(
            "not_finite", f"{subject} is not valid JSON: {name} is not a JSON number"
        )

    if raw is None:
        raise InvalidInput("empty", f"{subject} is empty")
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("not_json", f"{subject} is not valid UTF-8") from None
    if not raw.strip():
        raise InvalidInput("empty" if not raw else "not_json", f"{subject} is empty")
    try:
        return json.loads(raw, parse_constant=reject_constant)
    except InvalidInput:
        raise
    except json.JSONDecodeError as err:
        raise InvalidInput("not_json", f"{subject} is not valid JSON: {err.msg}") from None
    except RecursionError:
        # json's scanner recurses once per array or object level.
        raise InvalidInput("not_json", f"{subject} nests arrays or objects too deeply") from None
    except ValueError:
        # Python reads no integer of more than sys.get_int_max_str_digits() (4300) digits.
        raise InvalidInput("not_json", f"{subject} has an integer with too many digits") from None


def json_object(document: object, subject: str = "request body") -> dict:
    """``document`` if it is a JSON object."""
    if not isinstance(document, dict):
        raise InvalidInput(
            "not_object", f"{subject} must be a JSON object, got {json_type(document)}"
        )
    return document


def finite_number(
    value: object, where: str, maximum: float = math.inf, range_name: str = "float"
) -> float:
    """``value`` as a finite float of magnitude at most ``maximum``."""
    # bool is an int subclass in Python; JSON true/false are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("not_numeric", f"{where} must be a number, got {json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        # json.dumps spells them as the client did: NaN, Infinity, -Infinity.
        raise InvalidInput(
            "not_finite", f"{where} must be a finite number, got {json.dumps(value)}"
        )
    # Compared before float(): a huge JSON integer would overflow the conversion.
    if abs(value) > maximum:
        raise InvalidInput("not_finite", f"{where} is out of the {range_name} range")
    try:
        return float(value)
    except OverflowError:  # an integer literal with hundreds of digits
        raise InvalidInput("not_finite", f"{where} is out of the {range_name} range") from None


def data_row(
    raw: object, n_features: int, maximum: float = math.inf, range_name: str = "float"
) -> list[float]:
    """A request row: ``{"data": [x1, ..., xn]}`` with exactly ``n_features`` numbers.

    ``raw`` is the body as bytes or text, or already parsed (TorchServe parses bodies sent
    as ``application/json``, NaN included, so those are checked here all the same).
    """
    body = decode_json(raw) if isinstance(raw, bytes | bytearray | str) else raw
    body = json_object(body)
    if "data" not in body:
        raise InvalidInput("missing_feature", 'request body has no "data" field')
    data = body["data"]
    if not isinstance(data, list):
        raise InvalidInput(
            "not_numeric", f'"data" must be an array of {n_features} numbers, got {json_type(data)}'
        )
    # Elements first: for [[x1, x2]] "must be a number, got array" says more than a length.
    row = [finite_number(v, f'"data"[{i}]', maximum, range_name) for i, v in enumerate(data)]
    if len(row) != n_features:
        raise InvalidInput(
            "missing_feature", f'"data" must hold exactly {n_features} numbers, got {len(row)}'
        )
    return row


def named_row(raw: bytes | None, features: Sequence[str]) -> tuple[float, ...]:
    """A training row: a JSON object with a finite number for each of ``features``
    (other keys ignored), as the values in ``features`` order."""
    document: Mapping[str, object] = json_object(decode_json(raw, "message value"), "message value")
    values = []
    for feature in features:
        if feature not in document:
            raise InvalidInput("missing_feature", f"message value has no {feature!r}")
        values.append(finite_number(document[feature], repr(feature)))
    return tuple(values)
