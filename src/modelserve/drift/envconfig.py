"""Reading the DRIFT_* environment variables: typed, with errors that name the variable.

Bad settings fail at start with one clear line instead of deep inside a Kafka call.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence

from modelserve.buckets import DEFAULT_EDGES, validate_edges


class ConfigError(ValueError):
    """A DRIFT_* variable that cannot be used; the message names it."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """A non-empty string (an empty variable counts as unset)."""
    value = env.get(name, "").strip()
    return value or default


# Upper bounds of what settings go into: a TCP port, and Kafka's 16- and 32-bit fields
# (kafka-python fails every request that carries a larger value).
PORT_MAX = 65535
INT16_MAX = 2**15 - 1
INT32_MAX = 2**31 - 1


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer, optionally at least ``minimum`` and at most ``maximum``."""
    text = env_str(env, name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def env_float(
    env: Mapping[str, str], name: str, default: float, minimum: float | None = None
) -> float:
    """A finite float, optionally at least ``minimum``."""
    text = env_str(env, name, repr(default))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {text!r}")
    return value


def env_list(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    """Comma-separated names, blanks stripped, none empty, no duplicates."""
    items = tuple(part.strip() for part in env_str(env, name, default).split(","))
    if not items or any(not item for item in items) or len(set(items)) != len(items):
        raise ConfigError(f"{name} must be a comma-separated list of distinct names")
    return items


def env_floats(env: Mapping[str, str], name: str, default: str, count: int) -> tuple[float, ...]:
    """Comma-separated finite floats, exactly ``count`` of them."""
    text = env_str(env, name, default)
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name} must list {count} finite numbers, got {text!r}")
    return values


def bucket_edges(
    text: str | None, features: Sequence[str], name: str = "DRIFT_BUCKET_EDGES"
) -> dict[str, tuple[float, ...]]:
    """Edges per feature from optional JSON.

    ``[0.1, 0.2]`` applies to every feature; ``{"x1": [...], "x2": [...]}`` sets them per
    feature (a feature left out gets ``DEFAULT_EDGES``). Unset or empty: ``DEFAULT_EDGES``.
    """
    if text is None or not text.strip():
        return dict.fromkeys(features, DEFAULT_EDGES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{name} is not valid JSON: {error}") from None
    if isinstance(data, list):
        data = dict.fromkeys(features, data)
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON list of edges or an object of such lists")
    unknown = set(data) - set(features)
    if unknown:
        raise ConfigError(f"{name} names features not in DRIFT_FEATURES: {sorted(unknown)}")
    edges = {}
    for feature in features:
        raw = data.get(feature, DEFAULT_EDGES)
        if not isinstance(raw, list | tuple) or not all(_is_number(v) for v in raw):
            raise ConfigError(f"{name}: edges of {feature} must be a list of numbers")
        try:
            edges[feature] = validate_edges(raw)
        except ValueError as error:
            raise ConfigError(f"{name}: {feature}: {error}") from None
    return edges


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def setup_logging(env: Mapping[str, str]) -> None:
    """Log to stderr at DRIFT_LOG_LEVEL (INFO); kafka-python at DRIFT_KAFKA_LOG_LEVEL (WARNING).

    kafka-python logs every connection at INFO, which would drown our own lines.
    """
    logging.basicConfig(
        level=env_str(env, "DRIFT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(env_str(env, "DRIFT_KAFKA_LOG_LEVEL", "WARNING").upper())
