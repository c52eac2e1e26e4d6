"""provision_ec2.yml, the aws_ec2 inventory and destroy_ec2.yml against moto's EC2.

Run: ``make integration``, or ``python -m pytest tests/integration/test_ec2_provisioning.py -q``

moto's server mode (``moto[server]``, pinned in requirements.txt) listens on a free port of
127.0.0.1 only, with fake credentials; the playbooks and the inventory are the user's, run
unchanged with only the endpoint URL set (``AWS_URL``, which the amazon.aws modules and the
aws_ec2 inventory plugin both read). Its images are Debian-like AMIs of ours
(``MOTO_AMIS_PATH``), so the lookup by owner, name and creation date has a wrong answer to
avoid. The server is stopped at the end whatever happens; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is in requirements.txt: make venv")
pytest.importorskip("moto", reason="moto[server] is in requirements.txt: make venv")
from cryptography.hazmat.primitives import serialization  # noqa: E402 (after the skips)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REGION = "us-east-1"
NAME = "modelserve-node-1"
DEBIAN_OWNER = "136693071363"
WEB_CIDR = "0.0.0.0/0"
ADMIN_CIDR = "198.51.100.7/32"
SELECTOR = {"Name": "tag:Project", "Values": ["modelserve-node"]}
# The lookup must pick the newest debian-12-amd64 image of Debian's account, not a newer
# image of another release or of another owner.
EXPECTED_AMI = "ami-0deb12b"
AMIS = [
    ("ami-0deb12a", "debian-12-amd64-20240102-1614", DEBIAN_OWNER, "2024-01-02T12:00:00.000Z"),
    (EXPECTED_AMI, "debian-12-amd64-20241111-1928", DEBIAN_OWNER, "2024-11-11T12:00:00.000Z"),
    ("ami-0deb13a", "debian-13-amd64-20250901-2223", DEBIAN_OWNER, "2025-09-01T12:00:00.000Z"),
    ("ami-0e7117e1", "debian-12-amd64-20251001-0000", "123456789012", "2025-10-01T12:00:00.000Z"),
]
PLAYBOOK_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ami_file(path: Path) -> Path:
    """The AMIs moto serves instead of its own (the format of MOTO_AMIS_PATH)."""
    path.write_text(
        json.dumps(
            [
                {
                    "ami_id": ami_id,
                    "name": name,
                    "owner_id": owner,
                    "creation_date": created,
                    "state": "available",
                    "public": True,
                    "architecture": "x86_64",
                    "root_device_type": "ebs",
                    "root_device_name": "/dev/xvda",
                    "virtualization_type": "hvm",
                    "hypervisor": "xen",
                    "image_type": "machine",
                    "description": name,
                }
                for ami_id, name, owner, created in AMIS
            ]
        )
    )
    return path


def aws_env(endpoint: str | None) -> dict[str, str]:
    """The environment of the test's processes: fake credentials, and the endpoint (moto's
    URL) as the only change a user would make to reach another EC2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        # No profile of the machine's user may leak in, whatever ~/.aws holds.
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        ANSIBLE_NOCOLOR="1",
    )
    if endpoint:
        env["AWS_URL"] = endpoint
    return env


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server on a free 127.0.0.1 port; its URL."""
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    env = aws_env(None) | {"MOTO_AMIS_PATH": str(ami_file(workdir / "amis.json"))}
    log = (workdir / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer: {(workdir / 'moto.log').read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def ec2(moto: str) -> Any:
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh ED25519 pair, as ssh-keygen writes it: (public key file, private key file)."""
    directory = tmp_path_factory.mktemp("ssh")
    key = Ed25519PrivateKey.generate()
    private = directory / "id_ed25519"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = directory / "id_ed25519.pub"
    public_line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_bytes(public_line + b" admin@workstation\n")
    return public, private


def run(command: list[str], endpoint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=REPO,
        env=aws_env(endpoint),
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT,
        check=False,
    )


def playbook(name: str, endpoint: str, **extra: str) -> subprocess.CompletedProcess[str]:
    # The instance never answers SSH here: moto runs no machine.
    extra = {"ec2_instance_ssh_wait_timeout": "0"} | extra
    args = [arg for key, value in extra.items() for arg in ("-e", f"{key}={value}")]
    return run([str(BIN / "ansible-playbook"), name, *args], endpoint)


def changed(result: subprocess.CompletedProcess[str]) -> int:
    """changed= of localhost's recap line; fails the test on a failed run."""
    assert result.returncode == 0, result.stdout + result.stderr
    recap = re.search(r"^localhost\s+:.*\bchanged=(\d+).*\bfailed=0\b", result.stdout, re.M)
    assert recap, result.stdout
    return int(recap.group(1))


def provision(endpoint: str, public_key: Path) -> subprocess.CompletedProcess[str]:
    return playbook(
        "provision_ec2.yml",
        endpoint,
        ec2_instance_web_cidr=WEB_CIDR,
        ec2_instance_admin_cidr=ADMIN_CIDR,
        ec2_instance_public_key_file=str(public_key),
    )


def our_instances(ec2: Any) -> list[dict[str, Any]]:
    reservations = ec2.describe_instances(
        Filters=[{"Name": "tag:Name", "Values": [NAME]}, SELECTOR]
    )["Reservations"]
    return [
        instance
        for reservation in reservations
        for instance in reservation["Instances"]
        if instance["State"]["Name"] != "terminated"
    ]


def our_groups(ec2: Any) -> list[dict[str, Any]]:
    return ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [NAME]}])[
        "SecurityGroups"
    ]


def ingress(group: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    """Every inbound rule as (protocol, from port, to port, source): an IPv4 range, or any
    other kind of source (IPv6, another group, a prefix list), which must show up too."""
    rules = set()
    for rule in group["IpPermissions"]:
        ports = (rule["IpProtocol"], rule.get("FromPort", -1), rule.get("ToPort", -1))
        rules |= {(*ports, ip_range["CidrIp"]) for ip_range in rule.get("IpRanges", [])}
        if rule.get("Ipv6Ranges") or rule.get("UserIdGroupPairs") or rule.get("PrefixListIds"):
            rules.add((*ports, "another kind of source"))
    return rules


def unwrap(value: Any) -> Any:
    """ansible-inventory's JSON marks the plugin's values as {"__ansible_unsafe": value}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value


@pytest.mark.parametrize(
    ("web_cidr", "admin_cidr", "key", "message"),
    [
        pytest.param(
            None,
            None,
            None,
            "missing required arguments: ec2_instance_admin_cidr, ec2_instance_public_key_file, "
            "ec2_instance_web_cidr",
            id="nothing-given",
        ),
        pytest.param(
            WEB_CIDR,
            "0.0.0.0/0",
            "public",
            "ec2_instance_admin_cidr=0.0.0.0/0 must be an IPv4 network in CIDR notation other than "
            "0.0.0.0/0",
            id="ssh-open-to-all",
        ),
        pytest.param(
            "203.0.113.9",
            ADMIN_CIDR,
            "public",
            "ec2_instance_web_cidr=203.0.113.9 is not an IPv4 network in CIDR notation",
            id="web-address-not-cidr",
        ),
        pytest.param(
            WEB_CIDR,
            ADMIN_CIDR,
            "private",
            "must be a readable SSH public key file",
            id="private-key-given",
        ),
    ],
)
def test_bad_input_fails_before_any_aws_call(
    web_cidr: str | None,
    admin_cidr: str | None,
    key: str | None,
    message: str,
    keys: tuple[Path, Path],
) -> None:
    given = {
        "ec2_instance_web_cidr": web_cidr,
        "ec2_instance_admin_cidr": admin_cidr,
        "ec2_instance_public_key_file": {"public": keys[0], "private": keys[1]}.get(key or ""),
    }
    extra = {name: str(value) for name, value in given.items() if value is not None}
    # An endpoint where nothing listens: any AWS call would fail with a connection error.
    result = playbook("provision_ec2.yml", f"http://127.0.0.1:{free_port()}", **extra)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in " ".join(output.split()), output
    assert "Could not connect to the endpoint URL" not in output
    assert "PRIVATE KEY" not in output


@dataclass(frozen=True)
class Provisioned:
    endpoint: str
    public_key: Path
    first_run: subprocess.CompletedProcess[str]
    # An instance of the same Name that is not ours (no selector tag).
    stranger: str

    def again(self) -> subprocess.CompletedProcess[str]:
        return provision(self.endpoint, self.public_key)


@pytest.fixture(scope="module")
def provisioned(moto: str, ec2: Any, keys: tuple[Path, Path]) -> Provisioned:
    """A first provision, beside a stranger of the same Name: provision must not adopt it, the
    inventory must not list it, destroy must leave it running."""
    (stranger,) = ec2.run_instances(
        ImageId=EXPECTED_AMI,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": NAME}]}],
    )["Instances"]
    return Provisioned(moto, keys[0], provision(moto, keys[0]), stranger["InstanceId"])


def test_provision_makes_the_instance_key_and_group(provisioned: Provisioned, ec2: Any) -> None:
    assert changed(provisioned.first_run) >= 3  # key pair, security group, instance

    (instance,) = our_instances(ec2)
    assert instance["InstanceId"] != provisioned.stranger
    assert instance["State"]["Name"] == "running"
    assert instance["ImageId"] == EXPECTED_AMI
    assert instance["InstanceType"] == "t3.large"
    assert instance["KeyName"] == NAME
    tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
    assert tags == {"Name": NAME, "Project": "modelserve-node"}
    assert instance.get("PublicIpAddress")

    (group,) = our_groups(ec2)
    assert [sg["GroupId"] for sg in instance["SecurityGroups"]] == [group["GroupId"]]
    assert ingress(group) == {
        ("tcp", 80, 80, WEB_CIDR),
        ("tcp", 443, 443, WEB_CIDR),
        ("tcp", 22, 22, ADMIN_CIDR),
    }

    (pair,) = ec2.describe_key_pairs(KeyNames=[NAME], IncludePublicKey=True)["KeyPairs"]
    public_key = provisioned.public_key.read_text().split()[:2]
    assert pair["PublicKey"].split()[:2] == public_key


def test_second_provision_changes_nothing(provisioned: Provisioned, ec2: Any) -> None:
    before = our_instances(ec2)
    assert changed(provisioned.again()) == 0
    assert [i["InstanceId"] for i in our_instances(ec2)] == [i["InstanceId"] for i in before]


def test_provision_removes_an_inbound_rule_added_by_hand(
    provisioned: Provisioned, ec2: Any
) -> None:
    (group,) = our_groups(ec2)
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"], IpProtocol="tcp", FromPort=8080, ToPort=8080, CidrIp=WEB_CIDR
    )
    assert changed(provisioned.again()) == 1
    (group,) = our_groups(ec2)
    assert ("tcp", 8080, 8080, WEB_CIDR) not in ingress(group)
    assert len(ingress(group)) == 3


def test_inventory_lists_the_instance_in_the_modelserve_group(
    provisioned: Provisioned, ec2: Any
) -> None:
    inventory_list = [str(BIN / "ansible-inventory"), "-i", "inventory/ec2/aws_ec2.yml", "--list"]
    result = run(inventory_list, provisioned.endpoint)
    assert result.returncode == 0, result.stderr
    inventory = unwrap(json.loads(result.stdout))
    assert inventory["modelserve"]["hosts"] == [NAME]
    (instance,) = our_instances(ec2)
    hostvars = inventory["_meta"]["hostvars"][NAME]
    assert hostvars["ansible_host"] == instance["PublicIpAddress"]
    assert hostvars["instance_id"] == instance["InstanceId"]
    assert hostvars["ansible_user"] == "admin"
    assert hostvars["ansible_become"] is True


def test_destroy_leaves_nothing_of_ours_and_twice_changes_nothing(
    provisioned: Provisioned, ec2: Any
) -> None:
    assert changed(playbook("destroy_ec2.yml", provisioned.endpoint)) == 3
    assert our_instances(ec2) == []
    assert our_groups(ec2) == []
    assert (
        ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [NAME]}])["KeyPairs"] == []
    )
    (survivor,) = ec2.describe_instances(InstanceIds=[provisioned.stranger])["Reservations"][0][
        "Instances"
    ]
    assert survivor["State"]["Name"] == "running"

    assert changed(playbook("destroy_ec2.yml", provisioned.endpoint)) == 0
