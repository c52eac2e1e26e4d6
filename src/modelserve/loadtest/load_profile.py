"""What the simulated clients of locustfile.py send, read from LOAD_* variables.

Kept apart from the locustfile so it can be tested without Locust (which patches the
standard library with gevent when imported).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Bodies that the server must answer 400.
MALFORMED_BODIES = (
    b"not json",
    b"",
    b'{"data": [0.1]}',
    b'{"data": ["a", "b"]}',
    b'{"data": [NaN, 1.0]}',
    b'{"input": [0.1, 0.2]}',
)


@dataclass(frozen=True)
class LoadProfile:
    """What the simulated clients send."""

    route: str = "/predict"
    means: tuple[float, ...] = (0.5, 0.5)
    stddevs: tuple[float, ...] = (0.2, 0.2)
    shift_sigmas: float = 0.0
    invalid_share: float = 0.0
    wait_seconds: float = 0.0

    def row(self, rng: random.Random) -> list[float]:
        """One input row; x1's mean moved by shift_sigmas standard deviations."""
        row = [rng.gauss(mean, sd) for mean, sd in zip(self.means, self.stddevs, strict=True)]
        row[0] += self.shift_sigmas * self.stddevs[0]
        return row


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def profile_from_env(env: dict[str, str]) -> LoadProfile:
    """The load profile the environment asks for; bad settings fail loudly at start."""
    profile = LoadProfile(
        route=env.get("LOAD_ROUTE", "/predict"),
        means=_floats(env.get("LOAD_MEANS", "0.5,0.5")),
        stddevs=_floats(env.get("LOAD_STDDEVS", "0.2,0.2")),
        shift_sigmas=float(env.get("LOAD_SHIFT_SIGMAS", "0")),
        invalid_share=float(env.get("LOAD_INVALID_SHARE", "0")),
        wait_seconds=float(env.get("LOAD_WAIT_SECONDS", "0")),
    )
    if len(profile.means) != len(profile.stddevs) or not profile.means:
        raise ValueError("LOAD_MEANS and LOAD_STDDEVS must list the same number of features")
    if not all(sd > 0 and math.isfinite(sd) for sd in profile.stddevs):
        raise ValueError("LOAD_STDDEVS must be positive numbers")
    if not 0.0 <= profile.invalid_share <= 1.0:
        raise ValueError("LOAD_INVALID_SHARE must lie between 0 and 1")
    if not profile.route.startswith("/"):
        raise ValueError("LOAD_ROUTE must start with /")
    return profile
