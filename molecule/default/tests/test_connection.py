"""How Ansible reaches the VM: make test runs every playbook over SSH as the unprivileged
`admin` with passwordless sudo, as on an EC2 image (make demo keeps Docker's connection).
These checks force the SSH path whichever way the suite was started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO, run_ansible

SSH_DIR = Path(os.environ.get("MODELSERVE_SSH_DIR", REPO / ".cache" / "ssh"))
SSH_PORT = os.environ.get("MODELSERVE_SSH_PORT", "2222")


def over_ssh(*argv: str) -> str:
    """An ad-hoc Ansible command over the inventory's SSH path; its output."""
    previous = os.environ.get("MODELSERVE_CONNECTION")
    os.environ["MODELSERVE_CONNECTION"] = "ssh"
    try:
        result = run_ansible("ansible", "modelserve", "-o", *argv, timeout=120)
    finally:
        if previous is None:
            del os.environ["MODELSERVE_CONNECTION"]
        else:
            os.environ["MODELSERVE_CONNECTION"] = previous
    assert result.returncode == 0, result.output[-2000:]
    return result.output


def test_the_suite_runs_its_playbooks_over_ssh() -> None:
    """make test exports MODELSERVE_CONNECTION=ssh: site.yml, swap.yml, deploy_model.yml,
    status.yml and loadtest.yml in the other tests (and converge, idempotence) use it."""
    assert os.environ.get("MODELSERVE_CONNECTION") == "ssh"


def test_ansible_logs_in_as_admin_and_becomes_root_with_sudo() -> None:
    assert "(stdout) admin" in over_ssh("-m", "ansible.builtin.command", "-a", "id -un")
    assert "(stdout) root" in over_ssh("--become", "-m", "ansible.builtin.command", "-a", "id -un")


ADMIN_KEY = ("-o", "IdentitiesOnly=yes", "-i", str(SSH_DIR / "admin_ed25519"))
NO_KEY = ("-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password")


def ssh(
    user: str, *options: str, known_hosts: Path = SSH_DIR / "known_hosts"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-p", SSH_PORT, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-o", "HostKeyAlias=modelserve-local-vm", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "StrictHostKeyChecking=yes", *options, f"{user}@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_sshd_takes_admins_key_only() -> None:
    assert ssh("admin", *ADMIN_KEY).returncode == 0
    # root, even with admin's key, is refused; the server offers public keys only (the
    # client lists the methods it was offered), so no password is ever asked for.
    for refused in (ssh("root", *ADMIN_KEY), ssh("admin", *NO_KEY)):
        assert refused.returncode == 255
        assert "Permission denied (publickey)." in refused.stderr


def test_a_host_key_other_than_the_vms_is_refused(tmp_path: Path) -> None:
    """The host key is checked strictly: a known_hosts naming another key stops SSH."""
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fields = (tmp_path / "other.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"modelserve-local-vm {fields[0]} {fields[1]}\n")
    result = ssh("admin", *ADMIN_KEY, known_hosts=known_hosts)
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr
