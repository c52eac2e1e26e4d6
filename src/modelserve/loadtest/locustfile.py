"""Load for the model server: rows drawn from the training distribution.

Settings come from LOAD_* environment variables (LOCUST_* ones belong to Locust),
so the same file drives plain load tests and drift tests:

    LOAD_ROUTE          route to POST to (default /predict)
    LOAD_MEANS          per-feature means of the training data (default "0.5,0.5")
    LOAD_STDDEVS        per-feature standard deviations (default "0.2,0.2")
    LOAD_SHIFT_SIGMAS   shift of x1's mean, in standard deviations (default 0: no drift)
    LOAD_INVALID_SHARE  share of deliberately malformed requests, 0..1 (default 0)
    LOAD_WAIT_SECONDS   pause between a user's requests (default 0)

A malformed request counts as a success when it gets 400 (that is the contract), a
valid one only when it gets 200 with a finite "output".

The locust role mounts this file at the top of Locust's directory and load_profile.py
under modelserve/loadtest/ beside it: Locust puts the locustfile's directory on sys.path,
so the import below finds it there as it does in the package.
"""

from __future__ import annotations

import json
import math
import os
import random

from locust import FastHttpUser, constant, task

from modelserve.loadtest.load_profile import MALFORMED_BODIES, profile_from_env

PROFILE = profile_from_env(dict(os.environ))


class ModelClient(FastHttpUser):
    """A client of the model API."""

    wait_time = constant(PROFILE.wait_seconds)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def predict(self) -> None:
        if self.rng.random() < PROFILE.invalid_share:
            body = self.rng.choice(MALFORMED_BODIES)
            with self.client.post(
                PROFILE.route, data=body, name=f"{PROFILE.route} (malformed)", catch_response=True
            ) as response:
                if response.status_code == 400:
                    response.success()
                else:
                    response.failure(f"malformed input answered {response.status_code}")
            return
        payload = json.dumps({"data": PROFILE.row(self.rng)})
        with self.client.post(
            PROFILE.route,
            data=payload,
            headers={"Content-Type": "application/json"},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            try:
                output = json.loads(response.text)["output"]
            except (ValueError, KeyError, TypeError):
                response.failure("no output in the answer")
                return
            if not math.isfinite(output):
                response.failure("output is not finite")
