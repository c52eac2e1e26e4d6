"""The local VM's SSH keys: made once, kept, and named by known_hosts."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from modelserve.testbed import ssh_keys


def test_keys_are_made_once_and_known_hosts_names_the_host_key(tmp_path: Path) -> None:
    directory = tmp_path / "ssh"
    ssh_keys.ensure_keys(directory)
    first = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert set(first) == {
        "admin_ed25519", "admin_ed25519.pub", "host_ed25519", "host_ed25519.pub", "known_hosts"
    }  # fmt: skip
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for private in ("admin_ed25519", "host_ed25519"):
        assert stat.S_IMODE((directory / private).stat().st_mode) == 0o600

    ssh_keys.ensure_keys(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == first

    # ssh-keygen finds the host key under the alias the inventory gives SSH.
    found = subprocess.run(
        ["ssh-keygen", "-F", ssh_keys.HOST_ALIAS, "-f", str(directory / "known_hosts")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    host_public = (directory / "host_ed25519.pub").read_text().split()[1]
    assert host_public in found


def test_a_lost_public_half_makes_a_new_pair(tmp_path: Path) -> None:
    ssh_keys.ensure_keys(tmp_path)
    before = (tmp_path / "admin_ed25519").read_bytes()
    (tmp_path / "admin_ed25519.pub").unlink()
    ssh_keys.ensure_keys(tmp_path)
    public = (tmp_path / "admin_ed25519.pub").read_text()
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(tmp_path / "admin_ed25519")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert (tmp_path / "admin_ed25519").read_bytes() != before
    assert public.split()[:2] == derived.split()[:2]
