"""Shared helpers for the verify step: the converged VM seen as a user sees it.

HTTP checks go to nginx's port published on this machine's 127.0.0.1; playbooks
run exactly as a user runs them, from the repository root with its local
inventory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
import yaml

from modelserve.wrk import WrkSummary, parse_summary

REPO = Path(__file__).resolve().parents[3]
BASE_URL = f"http://127.0.0.1:{os.environ.get('MODELSERVE_HTTP_PORT', '8080')}"
HTTPS_PORT = int(os.environ.get("MODELSERVE_HTTPS_PORT", "8443"))
HTTPS_URL = f"https://127.0.0.1:{HTTPS_PORT}"
REFERENCE_INPUT = [0.2, 0.6]


def bluegreen_contract() -> dict[str, Any]:
    """The bluegreen role's defaults and vars, rendered by Ansible's own templating: the
    colours, their addresses and ports, and the fact paths, read from their one home."""
    from ansible.errors import AnsibleUndefinedVariable
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar

    init_plugin_loader()
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for part in ("defaults", "vars"):
        path = REPO / "roles/bluegreen" / part / "main.yml"
        variables.update(loader.load_from_file(str(path), trusted_as_template=True))
    templar = Templar(loader=loader, variables=variables)
    contract: dict[str, Any] = {}
    for name, value in variables.items():
        # Not those derived from what a run finds on the host (bluegreen_inference_on_socket).
        with contextlib.suppress(AnsibleUndefinedVariable):
            contract[name] = templar.template(value)
    return contract


CONTRACT = bluegreen_contract()
COLOURS: tuple[str, ...] = tuple(CONTRACT["bluegreen_colours"])
FACT_FILE: str = CONTRACT["bluegreen_active_colour_fact_file"]


def colour_port(colour: str, api: str) -> int:
    """A colour's host port (127.0.0.1) of its "management" or "metrics" API."""
    return int(CONTRACT["bluegreen_colours"][colour]["ports"][api])


def colour_container(colour: str) -> str:
    """The name of a colour's TorchServe container."""
    return str(CONTRACT["bluegreen_colours"][colour]["container"])


def colour_socket(colour: str) -> str:
    """A colour's inference socket on the host (its only inference API)."""
    return str(CONTRACT["bluegreen_inference_sockets"][colour])


def colour_server(colour: str) -> str:
    """nginx's upstream server for a colour: its socket, through nginx's state mount."""
    nginx = yaml.safe_load((REPO / "roles/nginx/defaults/main.yml").read_text())
    nginx_vars = yaml.safe_load((REPO / "roles/nginx/vars/main.yml").read_text())
    inside = Path(colour_socket(colour)).relative_to(nginx["nginx_state_dir"])
    return f"unix:{Path(nginx_vars['nginx_drain_flag']).parent / inside}"


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    @property
    def changed(self) -> int:
        """The `changed=` count of the play recap (0 when nothing changed)."""
        counts = [int(n) for n in re.findall(r"changed=(\d+)", self.output)]
        assert counts, f"no play recap in:\n{self.output[-2000:]}"
        return sum(counts)


def user_environment() -> dict[str, str]:
    """This environment without Molecule's Ansible settings (its ANSIBLE_CONFIG would
    replace the repository's ansible.cfg and with it the default inventory)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}


def run_ansible(*argv: str, timeout: float = 600) -> PlaybookRun:
    """Run an Ansible command as a user does: from the repository root, with its
    ansible.cfg (and so its inventory)."""
    result = subprocess.run(
        argv,
        cwd=REPO,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


def run_playbook(playbook: str, *extra: str) -> PlaybookRun:
    return run_ansible("ansible-playbook", playbook, *extra)


# The nginx role alone, as site.yml runs it, or only some of its tasks (where a refused
# input stops the converge): for tests of its variables.
NGINX_PLAY = """\
- name: nginx only
  hosts: modelserve
  become: true
  gather_subset: [min]
  tasks:
    - name: The nginx role
      ansible.builtin.include_role:
        name: nginx
        tasks_from: {tasks}
"""


def converge_nginx(tmp_path: Path, *extra: str, tasks: str = "main") -> PlaybookRun:
    playbook = tmp_path / f"nginx-{tasks}.yml"
    playbook.write_text(NGINX_PLAY.format(tasks=tasks))
    return run_playbook(str(playbook), *extra)


def predict(
    route: str,
    payload: object | None = None,
    session: requests.Session | None = None,
    **kwargs: object,
) -> requests.Response:
    body = json.dumps({"data": REFERENCE_INPUT} if payload is None else payload)
    kwargs.setdefault("timeout", 10)
    return (session or requests).post(f"{BASE_URL}{route}", data=body, **kwargs)


def expected_reference_output() -> float:
    """What torch computes for the reference input with the delivered weights."""
    import torch

    state = torch.load(REPO / "files/model/model.pth", map_location="cpu")
    weight = next(v for k, v in state.items() if k.endswith("weight"))
    bias = next(v for k, v in state.items() if k.endswith("bias"))
    with torch.no_grad():
        out = torch.nn.functional.linear(torch.tensor([REFERENCE_INPUT]), weight, bias)
    return float(out.item())


@pytest.fixture(scope="session")
def reference_output() -> float:
    return expected_reference_output()


def torchserve_key(host, colour: str, kind: str = "management") -> str:
    """A colour's API key ("management" or "inference"), as TorchServe wrote it at its
    last start (read on the host as root, as the playbooks do)."""
    path = CONTRACT["bluegreen_key_files"][colour]
    return json.loads(host.file(path).content_string)[kind]["key"]


def active_colour(host) -> str:
    return json.loads(host.file(FACT_FILE).content_string)["active_colour"]


def routed_colour(route: str) -> str | None:
    """The colour that answers ``route`` (None when nothing answers)."""
    try:
        return predict(route).headers.get("X-Model-Colour")
    except requests.RequestException:
        return None


def put_in_production(host, colour: str) -> None:
    """swap.yml to ``colour``, unless the host's fact and nginx's routing already say so (a
    swap that would change nothing costs a playbook run; test_serving checks it changes nothing)."""
    if active_colour(host) != colour or routed_colour("/predict") != colour:
        swap = run_playbook("swap.yml", "-e", f"target={colour}")
        assert swap.returncode == 0, swap.output
    assert active_colour(host) == colour


def idle_colour(colour: str) -> str:
    """The colour /test/predict goes to: the first that is not production."""
    return next(c for c in COLOURS if c != colour)


# How far a served answer may be from torch's own (float32 through JSON).
TOLERANCE = 1e-6
# Other weights than files/model's: a deployed model whose answers differ from the delivered one.
NEW_WEIGHT, NEW_BIAS = [[1.0, 1.0]], [0.5]
# The version site.yml serves files/model as (the torchserve role's default).
DELIVERED_VERSION = "1.0"


def deploy(model_dir: Path, version: str, expected: float, *extra: str) -> PlaybookRun:
    """deploy_model.yml of ``model_dir`` to the idle colour, smoke-tested on the reference input."""
    variables = {
        "model_dir": str(model_dir),
        "model_version": version,
        "smoke_input": {"data": REFERENCE_INPUT},
        "smoke_expected": expected,
    }
    return run_playbook("deploy_model.yml", "-e", json.dumps(variables), *extra)


@pytest.fixture
def new_model(tmp_path: Path) -> tuple[Path, float]:
    """The delivered model with other weights, and what torch says it answers."""
    import torch

    model_dir = tmp_path / "model-2.0"
    shutil.copytree(REPO / "files/model", model_dir)
    weight, bias = torch.tensor(NEW_WEIGHT), torch.tensor(NEW_BIAS)
    torch.save({"linear.weight": weight, "linear.bias": bias}, model_dir / "model.pth")
    expected = torch.nn.functional.linear(torch.tensor([REFERENCE_INPUT]), weight, bias).item()
    return model_dir, float(expected)


def answers_reference(route: str, reference_output: float) -> bool:
    """Whether ``route`` answers the reference input as the delivered model does."""
    response = predict(route)
    return response.ok and abs(response.json()["output"] - reference_output) <= TOLERANCE


def management(host, colour: str, path: str, method: str = "GET") -> Any:
    """A colour's management API at ``path``, asked on the host with its key."""
    port = colour_port(colour, "management")
    auth = f"Authorization: Bearer {torchserve_key(host, colour)}"
    url = f"http://127.0.0.1:{port}{path}"
    return json.loads(host.check_output(f"curl -sf -X {method} -H '{auth}' '{url}'"))


def served_versions(host, colour: str) -> list[str]:
    """The versions of the model a colour has registered."""
    models = management(host, colour, f"/models/{CONTRACT['bluegreen_model_name']}/all")
    return sorted(model["modelVersion"] for model in models)


def deploy_delivered(reference_output: float) -> None:
    """files/model 1.0 to the idle colour."""
    restored = deploy(REPO / "files/model", DELIVERED_VERSION, reference_output)
    assert restored.returncode == 0, restored.output


@pytest.fixture
def restore_delivered_model(host, reference_output: float):
    """After the test, both colours serve files/model 1.0, the initial colour in production."""
    yield
    restore_delivered(host, reference_output)


@pytest.fixture(scope="module")
def restore_delivered_model_after_module(host, reference_output: float):
    """restore_delivered_model once, after a module whose tests take any colour as it is."""
    yield
    restore_delivered(host, reference_output)


def restore_delivered(host, reference_output: float) -> None:
    """Both colours serving files/model 1.0 alone, the initial colour in production,
    whichever models were left on either colour. Versions decide, not answers: a
    candidate with the delivered weights (another model.py) answers as 1.0 does."""
    initial = CONTRACT["bluegreen_initial_colour"]
    other = idle_colour(initial)
    if served_versions(host, initial) != [DELIVERED_VERSION]:
        put_in_production(host, other)
        deploy_delivered(reference_output)
    put_in_production(host, initial)
    if served_versions(host, other) != [DELIVERED_VERSION]:
        deploy_delivered(reference_output)
    for colour in COLOURS:
        assert served_versions(host, colour) == [DELIVERED_VERSION], colour
    for route in ("/predict", "/test/predict"):
        assert answers_reference(route, reference_output), route


WRK_POST = "\n".join(
    [
        'wrk.method = "POST"',
        f"wrk.body = '{json.dumps({'data': REFERENCE_INPUT})}'",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
)


class PredictLoad:
    """wrk keeping kept-alive connections busy on /predict (the reference input) for the
    duration of a ``with`` block; ``limit_s`` only bounds a block that hangs."""

    def __init__(
        self,
        tmp_path: Path,
        connections: int,
        limit_s: int,
        base_url: str = BASE_URL,
        script: str = WRK_POST,
    ) -> None:
        self.script = tmp_path / "post.lua"
        self.script_text = script
        self.argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{limit_s}s",
                     "--timeout", "5s", "-s", str(self.script), f"{base_url}/predict"]  # fmt: skip
        self.limit_s = limit_s
        self.output = ""

    def __enter__(self) -> PredictLoad:
        self.script.write_text(self.script_text)
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.process.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        self.output, _ = self.process.communicate(timeout=30)

    def summary(self) -> WrkSummary:
        """wrk's figures, once it ended by itself well within its limit."""
        assert self.process.returncode == 0, self.output
        load = parse_summary(self.output)
        assert load.duration_s < self.limit_s - 2, "wrk ran out of time before the block ended"
        return load
