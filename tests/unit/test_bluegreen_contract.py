"""The bluegreen role's contract check, run by Ansible on this machine: the default
contract and a third colour pass; each way a contract cannot work is refused, named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONTRACT = yaml.safe_load((REPO / "roles/bluegreen/defaults/main.yml").read_text())
COLOURS: dict[str, Any] = CONTRACT["bluegreen_colours"]


def with_colour(name: str, **settings: Any) -> dict[str, Any]:
    """The default colours with one entry added or changed."""
    entry = {**COLOURS.get(name, {}), **settings}
    return {"bluegreen_colours": {**COLOURS, name: entry}}


THIRD = {"container": "torchserve-cyan", "address": "172.30.0.12",
         "ports": {"management": 8381, "metrics": 8382}}  # fmt: skip
# Each case: the variables set over the defaults, and what the refusal must say (None:
# the contract must pass).
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "defaults": ({}, None),
    "a third colour": (with_colour("cyan", **THIRD), None),
    "duplicate address": (
        with_colour("green", address=COLOURS["blue"]["address"]),
        f"two colours share the address {COLOURS['blue']['address']}",
    ),
    "duplicate port": (
        with_colour("cyan", **{**THIRD, "ports": {**THIRD["ports"], "metrics": 8182}}),
        "two colours share the port 8182",
    ),
    "address outside the subnet": (
        with_colour("green", address="172.31.0.11"),
        "green: address 172.31.0.11 is not a usable address of bluegreen_network_subnet",
    ),
    "address Docker hands out": (
        with_colour("green", address="172.30.0.200"),
        "green: address 172.30.0.200 is inside bluegreen_network_ip_range",
    ),
    "initial colour outside the list": (
        {"bluegreen_initial_colour": "purple"},
        "bluegreen_initial_colour purple is not one of blue, green",
    ),
    "sockets outside nginx's state directory": (
        {
            "bluegreen_inference_sockets_dir": "/run/modelserve",
            "nginx_state_dir": "/opt/modelserve/nginx/state",
        },
        "bluegreen_inference_sockets_dir /run/modelserve is not inside nginx_state_dir",
    ),
    "one colour": (
        {"bluegreen_colours": {"blue": COLOURS["blue"]}},
        "bluegreen_colours must map two colours or more",
    ),
}


def record(case: str, outcome: str) -> dict[str, Any]:
    """A task that keeps a case's outcome (a Jinja expression)."""
    return {
        "ansible.builtin.set_fact": {
            "outcomes": f"{{{{ outcomes | combine({{{case!r}: {outcome}}}) }}}}"
        }
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every case in one ansible-playbook run (each costs seconds of Ansible start-up
    otherwise): the check's message, or "passed"."""
    out = tmp_path_factory.mktemp("contract") / "outcomes.json"
    check = {"name": "bluegreen", "tasks_from": "preflight"}
    tasks: list[dict[str, Any]] = [
        {
            "name": f"Case {case}",
            "block": [{"ansible.builtin.include_role": check, "vars": variables},
                      record(case, "'passed'")],
            "rescue": [record(case, "ansible_failed_result.msg")],
        }
        for case, (variables, _) in CASES.items()
    ]  # fmt: skip
    tasks.append(
        {"ansible.builtin.copy": {"content": "{{ outcomes | to_json }}", "dest": f"{out}"}}
    )
    play = {"hosts": "localhost", "gather_facts": False, "vars": {"outcomes": {}}, "tasks": tasks}
    playbook = out.with_name("contract.yml")
    playbook.write_text(json.dumps([play]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    result = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", CASES)
def test_contract_check(outcomes: dict[str, str], case: str) -> None:
    expected = CASES[case][1]
    if expected is None:
        assert outcomes[case] == "passed"
    else:
        assert expected in outcomes[case]
        assert "Nothing was changed" in outcomes[case]
