#!/usr/bin/env python3
"""Prepare the machine that runs the tests and the demo VM.

Installs the Debian packages the test bed needs and makes sure a Docker daemon
answers. Hosts without systemd (containers, CI sandboxes) get `dockerd` started
in the background; everything is a no-op when already in place.

Standard library only, and no import of the package: `make host` runs this file with the
system python3, before the venv exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Debian packages the controller needs: a Docker engine, debootstrap for the base
# image, wrk for the load tests, and an SSH client (the tests reach the VM over SSH).
PACKAGES = ("docker.io", "debootstrap", "wrk", "openssh-client")
DOCKERD_LOG = Path(os.environ.get("DOCKERD_LOG", "/var/log/modelserve-dockerd.log"))
DOCKER_WAIT_SECONDS = 60


def log(message: str) -> None:
    print(f"[host-setup] {message}", flush=True)


def missing_packages() -> list[str]:
    missing = []
    for package in PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def install_packages(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(packages)}")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )


def docker_answers() -> bool:
    result = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return result.returncode == 0


def start_dockerd() -> None:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        sys.exit("host-setup: dockerd is not installed (apt-get install docker.io)")
    if Path("/run/systemd/system").is_dir():
        log("starting docker with systemctl")
        subprocess.run(["systemctl", "start", "docker"], check=True)
    else:
        log(f"no systemd: starting dockerd in the background (log: {DOCKERD_LOG})")
        with DOCKERD_LOG.open("ab") as logfile:
            subprocess.Popen(
                [dockerd],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    deadline = time.monotonic() + DOCKER_WAIT_SECONDS
    while time.monotonic() < deadline:
        if docker_answers():
            log("docker daemon answers")
            return
        time.sleep(1)
    sys.exit(f"host-setup: dockerd did not answer within {DOCKER_WAIT_SECONDS}s, see {DOCKERD_LOG}")


def main() -> None:
    packages = missing_packages()
    if packages:
        install_packages(packages)
    if not docker_answers():
        start_dockerd()
    log("ready")


if __name__ == "__main__":
    main()
