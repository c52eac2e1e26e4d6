"""The SSH keys of the local VM, made once per checkout in `.cache/ssh/`.

The VM is reached over SSH as an unprivileged `admin` with passwordless sudo, as on an
EC2 image. Both ends' keys are generated here, never committed: the client key Ansible
logs in with, whose public half the VM mounts as `admin`'s authorized key, and the VM's
host key, which it mounts too, so that `known_hosts` can name it before the VM exists
and SSH checks it strictly (under the alias `HOST_ALIAS`, whatever the port).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HOST_ALIAS = "modelserve-local-vm"
CLIENT_KEY = "admin_ed25519"
HOST_KEY = "host_ed25519"


def generate(path: Path, comment: str) -> None:
    """An ed25519 pair at `path` and `path`.pub, unless it is there."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


def ensure_keys(directory: Path) -> None:
    """Both pairs and a known_hosts naming the host key, in `directory` (mode 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    generate(directory / CLIENT_KEY, "admin@modelserve-local-vm")
    generate(directory / HOST_KEY, f"root@{HOST_ALIAS}")
    host_public = (directory / f"{HOST_KEY}.pub").read_text().split()
    known_hosts = f"{HOST_ALIAS} {host_public[0]} {host_public[1]}\n"
    path = directory / "known_hosts"
    if not path.exists() or path.read_text() != known_hosts:
        path.write_text(known_hosts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".cache" / "ssh")
    ensure_keys(parser.parse_args().dir)


if __name__ == "__main__":
    main()
