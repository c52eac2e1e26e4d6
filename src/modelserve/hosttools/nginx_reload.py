#!/usr/bin/env python3
"""Reload nginx in its container, and fail unless the new configuration is live.

Usage: nginx_reload.py [--container nginx] [--timeout 10] [--error-log PATH]

`nginx -s reload` only signals the master and exits 0 even when the master then refuses
the new configuration: it logs an [emerg] and keeps the old one live (e.g. a limit_req
zone whose key changed, which `nginx -t` accepts). A reload that took starts new worker
processes, so this waits for a worker that was not there before the signal.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# The image has no ps: nginx's workers are read from /proc inside the container.
WORKERS = (
    'for p in /proc/[0-9]*; do case "$(tr "\\0" " " < "$p/cmdline" 2>/dev/null)" in '
    '"nginx: worker process"*) echo "${p#/proc/}";; esac; done'
)


def in_container(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, *argv], capture_output=True, text=True, check=False
    )


def workers(container: str) -> set[str]:
    return set(in_container(container, "sh", "-c", WORKERS).stdout.split())


def last_emergency(container: str, error_log: str) -> str:
    tail = in_container(container, "tail", "-n", "50", error_log).stdout.splitlines()
    return next((line for line in reversed(tail) if "[emerg]" in line), "")


def reload(container: str, timeout: float, error_log: str) -> str | None:
    """Reload; None when new workers run, else why not."""
    before = workers(container)
    if not before:
        return f"nginx has no worker process in container {container}: is it running?"
    signalled = in_container(container, "nginx", "-s", "reload")
    if signalled.returncode != 0:
        return f"nginx -s reload failed: {signalled.stderr.strip()}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if workers(container) - before:
            return None
        time.sleep(0.2)
    why = last_emergency(container, error_log) or f"no new worker within {timeout:g} s"
    return f"nginx kept its previous configuration: {why}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--container", default="nginx")
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--error-log", default="/var/log/nginx/error.log")
    args = parser.parse_args(argv)
    failure = reload(args.container, args.timeout, args.error_log)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    print("reloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
