"""The load profile the locustfile reads from LOAD_* variables."""

from __future__ import annotations

import random
import statistics

import pytest

from modelserve.handler import InvalidRequest, parse_row
from modelserve.loadtest.load_profile import MALFORMED_BODIES, LoadProfile, profile_from_env


def test_defaults_draw_from_the_training_distribution() -> None:
    profile = profile_from_env({})
    rng = random.Random(7)
    rows = [profile.row(rng) for _ in range(20_000)]
    for feature in range(2):
        values = [row[feature] for row in rows]
        assert statistics.fmean(values) == pytest.approx(0.5, abs=0.01)
        assert statistics.stdev(values) == pytest.approx(0.2, abs=0.01)


def test_shift_moves_only_x1_by_the_given_standard_deviations() -> None:
    profile = profile_from_env({"LOAD_SHIFT_SIGMAS": "3"})
    rng = random.Random(7)
    rows = [profile.row(rng) for _ in range(20_000)]
    assert statistics.fmean(r[0] for r in rows) == pytest.approx(0.5 + 3 * 0.2, abs=0.01)
    assert statistics.fmean(r[1] for r in rows) == pytest.approx(0.5, abs=0.01)


def test_settings_are_read() -> None:
    profile = profile_from_env(
        {
            "LOAD_ROUTE": "/test/predict",
            "LOAD_MEANS": "1,2",
            "LOAD_STDDEVS": "0.5,0.25",
            "LOAD_INVALID_SHARE": "0.25",
            "LOAD_WAIT_SECONDS": "0.1",
        }
    )
    assert profile == LoadProfile("/test/predict", (1.0, 2.0), (0.5, 0.25), 0.0, 0.25, 0.1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOAD_MEANS": "1,2,3"}, "same number of features"),
        ({"LOAD_STDDEVS": "0.2,0"}, "positive"),
        ({"LOAD_STDDEVS": "0.2,nan"}, "positive"),
        ({"LOAD_INVALID_SHARE": "1.5"}, "between 0 and 1"),
        ({"LOAD_ROUTE": "predict"}, "start with /"),
    ],
)
def test_bad_settings_fail_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile_from_env(env)


def test_malformed_bodies_are_all_invalid_for_the_handler() -> None:
    for body in MALFORMED_BODIES:
        with pytest.raises(InvalidRequest):
            parse_row(body)
