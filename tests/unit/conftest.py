"""Make the demo model delivery importable as top-level modules, as it is where it runs
(its make_weights.py imports model.py by name). The platform's own code is the installed
`modelserve`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from ts.protocol import otf_message_handler

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "files" / "model"
SHIPPED_DIRS = (MODEL_DIR,)

for directory in SHIPPED_DIRS:
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))

# Property-based tests stay bounded: `make unit` must stay fast. HYPOTHESIS_PROFILE=thorough
# searches longer, e.g. after a change to the handler's parsing.
settings.register_profile(
    "unit",
    max_examples=150,
    deadline=timedelta(seconds=2),
    # Hostile bodies are large on purpose (20,000 levels, 20,000 digits).
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("unit"), max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))

# TorchServe's own worker reader, before any test loads the handler (which replaces it).
STOCK_READER = otf_message_handler._retrieve_buffer


@pytest.fixture(autouse=True)
def torchserve_reader_restored() -> Iterator[None]:
    """Loading the handler installs its reader in this process's TorchServe modules, as in a
    worker: each test starts with TorchServe's own."""
    otf_message_handler._retrieve_buffer = STOCK_READER
    yield
    otf_message_handler._retrieve_buffer = STOCK_READER


@pytest.fixture(scope="module")
def bodies_left_undecoded() -> Iterator[None]:
    """TorchServe's worker as the torchserve role configures it (decode_input_request=false):
    it hands a JSON body on as bytes, undecoded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TS_DECODE_INPUT_REQUEST", "false")
        yield
