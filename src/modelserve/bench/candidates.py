"""What the benchmark (modelserve.bench.run) compares, and with which settings: one place.

The tuned TorchServe candidate and the floor's nginx take their settings from the role
defaults, so the benchmark always measures what a converge deploys; ``--set`` overrides
them for one run (to try a setting before making it the default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from modelserve.bench import REPO

TORCHSERVE_DEFAULTS = REPO / "roles" / "torchserve" / "defaults" / "main.yml"
NGINX_DEFAULTS = REPO / "roles" / "nginx" / "defaults" / "main.yml"
BLUEGREEN_DEFAULTS = REPO / "roles" / "bluegreen" / "defaults" / "main.yml"
TORCHSERVE_VARS = REPO / "roles" / "torchserve" / "vars" / "main.yml"

# The load: the same tool, script and duration for every candidate. Every candidate runs
# once per round, in an order that rotates, so a co-tenant's burst spreads over them.
CONNECTIONS = (100, 200)
ROUNDS = 5
DURATION_S = 6  # 8 candidates x 2 connection counts x 5 rounds: about 10 minutes in all
WARMUP_S = 3
WRK_THREADS = 2
WRK_TIMEOUT_S = 5


@dataclass(frozen=True)
class TorchServeSettings:
    """config.properties and model-config settings of one TorchServe candidate.

    ``None`` leaves TorchServe's own default (queue 100, netty threads = cores).
    """

    workers: int
    batch_size: int
    max_batch_delay_ms: int
    job_queue_size: int | None
    netty_threads: int | None
    netty_client_threads: int | None
    jvm_heap: str | None
    decode_input_request: bool
    log_level: str | None  # None: TorchServe's own log4j2.xml (every request, at DEBUG)
    access_log: bool
    # Prometheus metrics mode with the metrics API and model metrics auto-detection, as the
    # torchserve role's config.properties always sets them; False: TorchServe's log mode.
    prometheus_metrics: bool = False
    # Netty's epoll transport (use_native_io): also what a Unix-socket address needs.
    native_io: bool = False
    # The handler's buffered reader of the worker protocol (modelserve.worker_reader).
    buffered_reader: bool = True

    def override(self, assignments: dict[str, str]) -> TorchServeSettings:
        """A copy with ``name=value`` assignments applied (values parsed as YAML)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(assignments) - known)
        if unknown:
            raise ValueError(f"unknown TorchServe setting(s) {unknown}; known: {sorted(known)}")
        values = {name: yaml.safe_load(text) for name, text in assignments.items()}
        for name, value in values.items():
            current = getattr(self, name)
            # A setting keeps its kind (a None default takes a number or a word).
            kind = (int, str) if current is None else type(current)
            if isinstance(value, bool) != isinstance(current, bool) or not isinstance(value, kind):
                wanted = "a number or a word" if current is None else type(current).__name__
                raise ValueError(f"{name}={assignments[name]!r}: {name} takes {wanted}")
        return replace(self, **values)


# The reference project's TorchServe: one worker, no batching, TorchServe's default queue
# and threads. The model and handler are ours in every candidate, so only settings differ.
REFERENCE_TORCHSERVE = TorchServeSettings(
    workers=1,
    batch_size=1,
    max_batch_delay_ms=100,
    job_queue_size=None,
    netty_threads=None,
    netty_client_threads=None,
    jvm_heap=None,
    decode_input_request=True,
    log_level=None,
    access_log=True,
)

FASTAPI_WORKERS = 1  # `uvicorn app:app`, as the reference project ran it: one process


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def archived_package_files() -> list[str]:
    """The package modules the torchserve role archives beside the platform's handler."""
    return list(_read_yaml(TORCHSERVE_VARS)["torchserve_package_files"])


def tuned_torchserve(defaults: dict[str, Any] | None = None) -> TorchServeSettings:
    """Our settings, as the torchserve role's defaults set them."""
    d = _read_yaml(TORCHSERVE_DEFAULTS) if defaults is None else defaults
    return TorchServeSettings(
        workers=int(d["torchserve_default_workers_per_model"]),
        batch_size=int(d["torchserve_batch_size"]),
        max_batch_delay_ms=int(d["torchserve_max_batch_delay"]),
        job_queue_size=int(d["torchserve_job_queue_size"]),
        netty_threads=int(d["torchserve_netty_threads"]),
        netty_client_threads=int(d["torchserve_netty_client_threads"]),
        jvm_heap=str(d["torchserve_jvm_heap"]),
        decode_input_request=False,
        log_level=str(d["torchserve_log_level"]),
        access_log=bool(d["torchserve_access_log"]),
        # Not variables: templates/config.properties.j2 always sets them.
        prometheus_metrics=True,
        native_io=True,
    )


@dataclass(frozen=True)
class NginxSettings:
    """The nginx role's connection settings, used by the floor candidate too."""

    worker_processes: str
    worker_connections: int
    keepalive_timeout: int
    upstream_keepalive: int


def nginx_settings(defaults: dict[str, Any] | None = None) -> NginxSettings:
    d = _read_yaml(NGINX_DEFAULTS) if defaults is None else defaults
    return NginxSettings(
        worker_processes=str(d["nginx_worker_processes"]),
        worker_connections=int(d["nginx_worker_connections"]),
        keepalive_timeout=int(d["nginx_keepalive_timeout"]),
        upstream_keepalive=int(d["nginx_upstream_keepalive"]),
    )


def nginx_config_dir() -> str:
    """Where the nginx role keeps nginx's configuration on the host."""
    return str(_read_yaml(NGINX_DEFAULTS)["nginx_config_dir"])


def canary_weight() -> int:
    """The canary candidate's weight: the middle step of a rollout by default."""
    steps = _read_yaml(BLUEGREEN_DEFAULTS)["bluegreen_rollout_steps"]
    return int(steps[len(steps) // 2])


def colour_containers() -> list[str]:
    """Every colour's TorchServe container, from the blue/green contract."""
    colours = _read_yaml(BLUEGREEN_DEFAULTS)["bluegreen_colours"]
    return [str(colour["container"]) for colour in colours.values()]


# What nginx adds to every request it forwards to production's TorchServe
# (roles/nginx/templates/modelserve.conf.j2), beyond the Host, Content-Type and
# Content-Length wrk sends anyway. TorchServe alone (4) is sent them too, so that it does
# production's work: the worker carries every header, and the handler counts a production
# request's inputs for drift detection. (5)/(4) is then what the stack adds in front.
PRODUCTION_HEADERS = ("X-Modelserve-Route: production", "Authorization: Bearer benchmark")


@dataclass(frozen=True)
class Candidate:
    number: int
    key: str
    title: str
    torchserve: TorchServeSettings | None = None
    # "Name: value" headers the load generator adds to each request
    headers: tuple[str, ...] = ()


def candidates(tuned: TorchServeSettings) -> tuple[Candidate, ...]:
    return (
        Candidate(1, "nginx-floor", "nginx, fixed JSON body (HTTP floor)"),
        Candidate(
            2, "torchserve-reference", "TorchServe, reference settings", REFERENCE_TORCHSERVE
        ),
        Candidate(3, "fastapi", "FastAPI/uvicorn, same model"),
        Candidate(
            4,
            "torchserve-tuned",
            "TorchServe, our settings, sent production's request",
            tuned,
            PRODUCTION_HEADERS,
        ),
        Candidate(5, "stack", "our stack, nginx /predict"),
        Candidate(6, "stack-https", "our stack over HTTPS, nginx /predict"),
        Candidate(
            7,
            "stack-canary",
            f"our stack in a canary step, {canary_weight()} % of /predict on the idle colour",
        ),
        # nginx adds production's headers itself, as the stack's does.
        Candidate(
            8,
            "proxy-floor",
            "TorchServe, our settings, behind a bare nginx on its socket (proxy floor)",
            tuned,
        ),
    )
