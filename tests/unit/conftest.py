"""Make the Python shipped by the project importable as top-level modules, as it is
where it runs: the model delivery (inside TorchServe) and the locustfile's helpers."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "files" / "model"
SHIPPED_DIRS = (MODEL_DIR, REPO / "roles" / "locust" / "files")

for directory in SHIPPED_DIRS:
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
