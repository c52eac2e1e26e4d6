#!/usr/bin/env python3
"""Validate a candidate nginx config file before Ansible puts it live.

Usage (from a template task's `validate:`):
    nginx_validate.py --config-dir DIR --image IMAGE --network NET --as conf.d/x.conf %s

The live config tree is copied to a temporary directory, the candidate replaces
the file it is meant to become, and `nginx -t` runs on that tree in a throwaway
container on the stack network, so upstream names resolve as they will live.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
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
            shutil.copytree(args.config_dir, tree)
        (tree / "conf.d").mkdir(parents=True, exist_ok=True)
        target = tree / args.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.candidate, target)
        argv = ["docker", "run", "--rm", f"--network={args.network}", "--entrypoint=nginx"]
        argv.append(f"--volume={tree / 'conf.d'}:/etc/nginx/conf.d:ro")
        if (tree / "nginx.conf").exists():
            argv.append(f"--volume={tree / 'nginx.conf'}:/etc/nginx/nginx.conf:ro")
        result = subprocess.run([*argv, args.image, "-t"], capture_output=True, text=True)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
