#!/usr/bin/env python3
"""Validate a candidate nginx config file before Ansible puts it live.

Usage (from a template task's `validate:`):
    nginx_validate.py --config-dir DIR --image IMAGE --network NET --as conf.d/x.conf %s

The live config tree is copied to a temporary directory, the candidate replaces
the file it is meant to become, and `nginx -t` runs on that tree in a throwaway
container on the stack network, so upstream names resolve as they will live.
A candidate under tls/ (a key and its certificate in one PEM file) is first tested
alone as a server's pair, since the live tree may not name it yet.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description="nginx -t on a candidate config file")
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--network", required=True)
    parser.add_argument("--as", dest="relative", required=True, help="path inside config dir")
    parser.add_argument("candidate", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nginx-validate-") as tmp:
        tree = Path(tmp) / "nginx"
        if args.config_dir.is_dir():
            shutil.copytree(args.config_dir, tree, ignore=outside_the_config(args.config_dir))
        (tree / "conf.d").mkdir(parents=True, exist_ok=True)
        target = tree / args.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.candidate, target)
        argv = ["docker", "run", "--rm", f"--network={args.network}", "--entrypoint=nginx"]
        if args.relative.startswith("tls/"):
            pair = Path(tmp) / "pair.conf"
            pair.write_text(PAIR_CONFIG.format(pem=f"/etc/nginx/{args.relative}"))
            mounts = [f"--volume={pair}:/etc/nginx/nginx.conf:ro"]
            mounts.append(f"--volume={target}:/etc/nginx/{args.relative}:ro")
            if not nginx_test([*argv, *mounts, args.image]):
                return 1
        argv.append(f"--volume={tree / 'conf.d'}:/etc/nginx/conf.d:ro")
        if (tree / "nginx.conf").exists():
            argv.append(f"--volume={tree / 'nginx.conf'}:/etc/nginx/nginx.conf:ro")
        if (tree / "tls").is_dir():
            argv.append(f"--volume={tree / 'tls'}:/etc/nginx/tls:ro")
        return 0 if nginx_test([*argv, args.image]) else 1


# What nginx's container mounts of the config directory; the rest (the state directory,
# with the colours' inference sockets, which cannot be copied) is not config.
CONFIG_ENTRIES = {"nginx.conf", "conf.d", "tls"}


def outside_the_config(config_dir: Path) -> Callable[[str, list[str]], set[str]]:
    """copytree's ignore: the config directory's entries that are not config."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        return set(names) - CONFIG_ENTRIES if Path(directory) == config_dir else set()

    return ignore


# A server with nothing but the candidate as its certificate and key.
PAIR_CONFIG = """events {{}}
http {{ server {{ listen 443 ssl; ssl_certificate {pem}; ssl_certificate_key {pem}; }} }}
"""


def nginx_test(argv: list[str]) -> bool:
    """`nginx -t` in the container that argv runs; its output passed on."""
    result = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
