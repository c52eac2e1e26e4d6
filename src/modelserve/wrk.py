"""wrk's plain-text summary, as the verify tests read it.

wrk prints its run time with the unit that suits it (src/units.c, format_time_us):
``us`` and ``ms`` below a second, ``s``, then ``m`` from 51 s on (``1.14m``); its unit
table also has ``h``. Every test that reads wrk's output goes through ``parse_summary``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SECONDS_PER_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_TOTAL = re.compile(r"(\d+) requests in (\S+?),")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_duration(text: str) -> float:
    """Seconds of a wrk duration such as ``850.00us``, ``12.5ms``, ``20.00s``, ``1.14m``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * SECONDS_PER_UNIT[match.group(2)]


@dataclass(frozen=True)
class WrkSummary:
    requests: int
    duration_s: float
    non_2xx: int = 0
    # connect, read, write, timeout: wrk prints the line only when one is not 0.
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_summary(output: str) -> WrkSummary:
    """Requests, run time and failures from the summary wrk prints when it stops."""
    total = _TOTAL.search(output)
    if total is None:
        raise ValueError(f"no 'N requests in T' line in wrk's output:\n{output[-2000:]}")
    non_2xx = _NON_2XX.search(output)
    errors = _SOCKET_ERRORS.search(output)
    kinds = ("connect", "read", "write", "timeout")
    return WrkSummary(
        requests=int(total.group(1)),
        duration_s=parse_duration(total.group(2)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(kinds, map(int, errors.groups()), strict=True)) if errors else {},
    )
