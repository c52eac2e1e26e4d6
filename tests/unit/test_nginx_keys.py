"""The nginx role's key tool, run as the systemd unit runs it, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from modelserve.hosttools import nginx_torchserve_keys

# Run as a file, as the systemd unit runs it on the host (a standalone script there).
TOOL = Path(nginx_torchserve_keys.__file__)


def key_file(path: Path, inference: str) -> None:
    keys = {"management": {"key": "m-" + inference}, "inference": {"key": inference}}
    path.write_text(json.dumps(keys))


def run(tmp_path: Path, wait_seconds: float = 0.5) -> str:
    argv = [sys.executable, str(TOOL), "--output", str(tmp_path / "keys.conf"), "--no-reload"]
    for colour in ("blue", "green"):
        argv += ["--key-file", f"{colour}={tmp_path / colour}.json"]
    argv += ["--wait-seconds", str(wait_seconds)]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.strip()


def test_writes_each_colour_key_once_and_for_root_only(tmp_path: Path) -> None:
    key_file(tmp_path / "blue.json", "bbbb1111")
    key_file(tmp_path / "green.json", "gggg_2-2")
    assert run(tmp_path) == "changed"
    conf = tmp_path / "keys.conf"
    assert '    blue "bbbb1111";' in conf.read_text()
    assert '    green "gggg_2-2";' in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o600
    assert run(tmp_path) == "unchanged"
    key_file(tmp_path / "green.json", "newgreen")
    assert run(tmp_path) == "changed"
    assert '    green "newgreen";' in conf.read_text()


def test_waits_for_a_key_file_being_written(tmp_path: Path) -> None:
    # TorchServe creates the file empty, then writes it.
    key_file(tmp_path / "blue.json", "bbbb1111")
    (tmp_path / "green.json").write_text("")
    writer = threading.Timer(1.0, key_file, (tmp_path / "green.json", "late0000"))
    writer.start()
    started = time.monotonic()
    assert run(tmp_path, wait_seconds=10) == "changed"
    writer.join()
    assert time.monotonic() - started >= 1.0
    assert '    green "late0000";' in (tmp_path / "keys.conf").read_text()


def test_keeps_the_last_key_of_a_missing_or_unusable_file(tmp_path: Path) -> None:
    key_file(tmp_path / "blue.json", "bbbb1111")
    key_file(tmp_path / "green.json", "gggg2222")
    run(tmp_path)
    (tmp_path / "green.json").unlink()
    assert run(tmp_path) == "unchanged"
    # Nothing but a key's characters ever reaches nginx's config.
    key_file(tmp_path / "blue.json", 'x"; } server { listen 1; #')
    assert run(tmp_path) == "unchanged"
    text = (tmp_path / "keys.conf").read_text()
    assert '    blue "bbbb1111";' in text and '    green "gggg2222";' in text
