"""Schemathesis against files/openapi.yaml on the live stack (nginx on 127.0.0.1 only).

Its CLI generates requests from the description (examples, boundary values, then random
ones, valid and invalid) and checks every answer: no 5xx, a documented status, the
documented content type, headers and body schema, and 4xx for what breaks the schema.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import BASE_URL, REPO

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
MAX_EXAMPLES = 100  # per operation and phase
TIME_LIMIT_SECONDS = 120


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(tmp_path: Path) -> None:
    assert BASE_URL.startswith("http://127.0.0.1:")
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(REPO / "files/openapi.yaml"),
        "--url",
        BASE_URL,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    started = time.monotonic()
    # cwd: Schemathesis keeps its example database in the working directory.
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=TIME_LIMIT_SECONDS
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    print(output[-8000:])
    print(f"schemathesis: exit code {result.returncode} after {elapsed:.0f} s")
    assert result.returncode == 0, output[-8000:]
    cases = re.search(r"Test cases:\s*(\d+) generated", output)
    assert cases and int(cases.group(1)) >= MAX_EXAMPLES, "Schemathesis tested too little"
