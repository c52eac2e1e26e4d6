#!/usr/bin/env python3
"""Give nginx the inference key of each TorchServe colour, and reload it on a change.

Usage:
    nginx_torchserve_keys.py --key-file blue=PATH --key-file green=PATH --output FILE
        [--fact FILE] [--drain-flag FILE --drain-seconds N] [--container nginx]
        [--no-reload]

TorchServe writes new random keys to key_file.json at each start; nginx sends the
inference key of the colour a request goes to (map $torchserve_colour in --output).
Run by the nginx role at converge (--no-reload: its handler reloads) and by a systemd
path unit whenever a colour's key file changes. Prints "changed" or "unchanged".
A reload is drained (as the role's handler does) unless production's own key changed:
production then refuses every request until nginx has the new key, so nginx reloads at once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# TorchServe's keys are URL-safe base64: anything else is not written into nginx's config.
KEY = re.compile(r"^[A-Za-z0-9_=-]{1,128}$")
# How often one run reads the key files (see main).
SYNC_ROUNDS = 3
ENTRY = re.compile(r'^\s*(\w+)\s+"([^"]*)";$', re.MULTILINE)


def read_key(path: Path, wait_seconds: float) -> str | None:
    """The inference key in a TorchServe key file; None when there is none. TorchServe
    creates the file empty and then writes it, so an unreadable file is read again."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            key = json.loads(path.read_text())["inference"]["key"]
            if isinstance(key, str) and KEY.match(key):
                return key
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def render(keys: dict[str, str]) -> str:
    entries = [
        *(f'    {colour} "{key}";' for colour, key in sorted(keys.items())),
        '    default "";',
    ]
    lines = [
        "# Written by nginx_torchserve_keys.py from each TorchServe colour's key_file.json:",
        "# the inference key nginx sends to the colour a request goes to. A secret (0600).",
        "map $torchserve_colour $torchserve_inference_key {",
        *entries,
        "}",
        "# The idle colour's, for a rollout's shadow copies of production requests: a mirror",
        "# subrequest shares its request's variables, so it cannot use the map above.",
        "map $test_colour $test_inference_key {",
        *entries,
        "}",
        "",
    ]
    return "\n".join(lines)


def production_colour(fact: Path | None) -> str | None:
    try:
        return json.loads(fact.read_text())["active_colour"] if fact else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def nginx(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, "nginx", *argv], capture_output=True, text=True
    )


def running(container: str) -> bool:
    state = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", container],
        capture_output=True,
        text=True,
    )
    return state.stdout.strip() == "true"


def reload(args: argparse.Namespace, drain: bool) -> None:
    tested = nginx(args.container, "-t")
    if tested.returncode != 0:
        raise RuntimeError(f"nginx -t failed, not reloaded:\n{tested.stderr}")
    if drain and args.drain_flag:
        # As the role's handler: every connection closes after its next answer first.
        args.drain_flag.write_text("")
        time.sleep(args.drain_seconds)
    try:
        # The role's reloader (installed beside this tool) proves the new config is live.
        reloader = Path(__file__).with_name("nginx_reload.py")
        reloaded = subprocess.run(
            [str(reloader), "--container", args.container], capture_output=True, text=True
        )
        if reloaded.returncode != 0:
            raise RuntimeError(f"nginx did not reload:\n{reloaded.stderr}")
        if drain and args.drain_flag:
            time.sleep(1)
    finally:
        if drain and args.drain_flag:
            args.drain_flag.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key-file", action="append", required=True, help="COLOUR=PATH")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--fact", type=Path, help="the active-colour fact file")
    parser.add_argument("--drain-flag", type=Path)
    parser.add_argument("--drain-seconds", type=float, default=0)
    parser.add_argument("--container", default="nginx")
    parser.add_argument("--wait-seconds", type=float, default=10)
    parser.add_argument("--no-reload", action="store_true")
    args = parser.parse_args()

    with open(args.output.with_name(f".{args.output.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # A key file that changes while this runs triggers no new run (systemd does not
        # start an active unit again): read them all again until nothing has changed.
        outcomes = [sync(args) for _ in range(SYNC_ROUNDS)]
        changed = "changed" in outcomes
    print("changed" if changed else "unchanged")
    return 0


def write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.chmod(partial, 0o600)
    partial.replace(path)


def sync(args: argparse.Namespace) -> str:
    """Write the current keys and reload nginx on them: "changed" or "unchanged"."""
    old_text = args.output.read_text() if args.output.exists() else ""
    old = dict(ENTRY.findall(old_text))
    keys: dict[str, str] = {}
    for spec in args.key_file:
        colour, _, path = spec.partition("=")
        # A colour without a key file (never started) keeps its last known key.
        keys[colour] = read_key(Path(path), args.wait_seconds) or old.get(colour, "")
    text = render(keys)
    if text == old_text:
        return "unchanged"
    write(args.output, text)
    if not args.no_reload and running(args.container):
        production = production_colour(args.fact)
        try:
            reload(args, drain=production is None or keys.get(production) == old.get(production))
        except RuntimeError:
            # nginx still runs the old keys: so must the file, or the next run (systemd
            # retries the unit) would find nothing to do.
            write(args.output, old_text)
            raise
    return "changed"


if __name__ == "__main__":
    sys.exit(main())
