"""Reading wrk's summary (modelserve.wrk) for every run time wrk can print: wrk's own
formatting rules generate the inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelserve import wrk


def wrk_format_time_us(us: float) -> tuple[str, float]:
    """wrk's format_time_us (src/units.c): the text, and the seconds one unit of its
    last printed digit stands for."""
    base, scale, units, unit_s = "us", 1000, ["ms", "s"], 1e-6
    if us >= 1_000_000:
        us, base, scale, units, unit_s = us / 1_000_000, "s", 60, ["m", "h"], 1.0
    amount, unit = us, base
    # wrk moves up while the next unit exists and the amount reaches 85 % of the scale.
    for i in range(len(units) - 1):
        if amount < scale * 0.85:
            break
        amount /= scale
        unit = units[i]
        unit_s *= scale
    return f"{amount:.2f}{unit}", unit_s


@given(st.floats(min_value=0, max_value=10 * 3600 * 1e6, allow_nan=False))
def test_every_run_time_wrk_prints_is_read_in_seconds(us: float) -> None:
    text, unit_s = wrk_format_time_us(us)
    assert wrk.parse_duration(text) == pytest.approx(us / 1e6, abs=0.005 * unit_s)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("850.00us", 850e-6), ("12.50ms", 0.0125), ("20.00s", 20.0), ("1.14m", 68.4), ("2.00h", 7200)],
)
def test_each_unit(text: str, seconds: float) -> None:
    assert wrk.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1.14", "m", "1.14 min", "-1s", "1.14d"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a wrk duration"):
        wrk.parse_duration(text)


@given(
    requests=st.integers(min_value=0, max_value=10**9),
    us=st.floats(min_value=0, max_value=10 * 3600 * 1e6, allow_nan=False),
    non_2xx=st.integers(min_value=0, max_value=10**6),
    errors=st.tuples(*[st.integers(min_value=0, max_value=10**6)] * 4),
)
def test_summary_counts_and_failures(
    requests: int, us: float, non_2xx: int, errors: tuple[int, int, int, int]
) -> None:
    text, unit_s = wrk_format_time_us(us)
    lines = [
        "Running 2m test @ http://127.0.0.1:8080/predict",
        "  2 threads and 50 connections",
        f"  {requests} requests in {text}, 20.31MB read",
    ]
    if any(errors):
        lines.append("  Socket errors: connect {}, read {}, write {}, timeout {}".format(*errors))
    if non_2xx:
        lines.append(f"  Non-2xx or 3xx responses: {non_2xx}")
    lines += ["Requests/sec:   1614.20", "Transfer/sec:    304.58KB"]
    summary = wrk.parse_summary("\n".join(lines) + "\n")
    assert summary.requests == requests
    assert summary.duration_s == pytest.approx(us / 1e6, abs=0.005 * unit_s)
    assert summary.non_2xx == non_2xx
    assert summary.failed == non_2xx + sum(errors)


def test_the_run_that_failed_on_a_slower_machine() -> None:
    """Issue 11: `110125 requests in 1.14m` raised AttributeError in the swap test."""
    summary = wrk.parse_summary("  110125 requests in 1.14m, 20.00MB read\n")
    assert (summary.requests, summary.failed) == (110125, 0)
    assert summary.duration_s == pytest.approx(68.4)


def test_output_without_a_summary_says_so() -> None:
    with pytest.raises(ValueError, match="no 'N requests in T' line"):
        wrk.parse_summary("unable to connect to 127.0.0.1:8080 Connection refused\n")
