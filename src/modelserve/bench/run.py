"""Benchmark: our stack against the HTTP floor, TorchServe as the reference project ran
it, FastAPI, and TorchServe with our settings, in one run, with one load tool.

Every candidate gets the same wrk load (post.lua: a JSON POST of the reference input) at
each connection count, after a warm-up, one candidate at a time so that they never
compete for the machine's cores. Candidates 1-4 run as containers on this machine's
Docker, published on 127.0.0.1; candidates 5-7 are the converged Molecule VM's nginx
(``MODELSERVE_INSTANCE``, ``MODELSERVE_HTTP_PORT``, ``MODELSERVE_HTTPS_PORT``): plain,
over HTTPS, and in a canary step (benchmarks/README.md). Writes
``benchmarks/results/<timestamp>/`` with results.md, results.json and chart.png.

Usage: ``make bench`` or ``python -m modelserve.bench.run [--only 1 5] [--set batch_size=16]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import jinja2

from modelserve.bench import DATA_DIR, REPO, report
from modelserve.bench import candidates as cfg
from modelserve.testbed import images as build_images

T = TypeVar("T")
MODEL_DIR = REPO / "files" / "model"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
POST_SCRIPT = DATA_DIR / "post.lua"
LOG_TEMPLATE = REPO / "roles" / "torchserve" / "templates" / "log4j2.xml.j2"
LOG_CONFIG = "/home/model-server/log4j2.xml"
TORCHSERVE_IMAGE = "modelserve-local/torchserve:0.12.0-cpu"
NGINX_IMAGE = "modelserve-local/nginx:1.27"
FASTAPI_SPEC = build_images.ImageSpec(
    "fastapi", "modelserve-local/fastapi-bench:latest", offline=False, root=DATA_DIR / "images"
)
CONTAINER_PREFIX = "modelserve-benchmark-"
HOST_PORT = {1: 18181, 2: 18182, 3: 18183, 4: 18184, 8: 18188}
# The proxy floor (8): TorchServe's socket, in a directory both of its containers mount.
SOCKET_DIR = "/sock"
INFERENCE_SOCKET = f"{SOCKET_DIR}/inference.sock"
INFERENCE_TCP = "http://0.0.0.0:8080"
FLOOR_TORCHSERVE_SUFFIX = "-torchserve"
MODEL_NAME = "model"
# The stack's containers that work per request off the request path: mtail reads every
# line nginx logs (the route_metrics role).
STACK_OFF_PATH = ("route-metrics",)
# Beside this interpreter: the venv's, also when it is run without the venv on PATH.
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
NGINX_RELOADER = "/usr/local/libexec/modelserve/nginx_reload.py"  # the nginx role's
BODY = json.dumps({"data": [0.2, 0.6]}).encode()


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check)


def remove_container(name: str) -> None:
    docker("rm", "-f", name, check=False)


def unverified_tls() -> ssl.SSLContext:
    """For the test bed's self-signed certificate: what is waited for is an answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


UNVERIFIED = unverified_tls()


def wait_until_serving(url: str, timeout_s: float = 180) -> None:
    """Until a POST of the reference input answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(
            url, data=BODY, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=UNVERIFIED) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(1)


@dataclass(frozen=True)
class Endpoint:
    """Where a candidate answers: its container (on this host, or in the VM), the port
    published on this host's 127.0.0.1, and its own port inside its network namespace."""

    container: str
    published_port: int
    inner_port: int
    path: str
    scheme: str = "http"

    @property
    def published_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.published_port}{self.path}"

    @property
    def inner_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.inner_port}{self.path}"


# --- the candidates' containers -------------------------------------------------------


def write_model_store(work: Path, settings: cfg.TorchServeSettings) -> Path:
    """A model store holding model.mar archived with ``settings``' workers and batching."""
    src = work / "model-src"
    store = work / "model-store"
    for directory in (src, store):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    for name in ("model.py", "model.pth"):
        shutil.copy(MODEL_DIR / name, src / name)
    # The platform's handler and the modules it imports, as the torchserve role archives them.
    shutil.copy(PACKAGE_DIR / "handler.py", src / "handler.py")
    (src / "platform" / "modelserve").mkdir(parents=True, exist_ok=True)
    for name in cfg.archived_package_files():
        shutil.copy(PACKAGE_DIR / name, src / "platform" / "modelserve" / name)
    model_config = {
        "minWorkers": settings.workers,
        "maxWorkers": settings.workers,
        "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay_ms,
        "responseTimeout": 30,
        "startupTimeout": 120,
    }
    lines = "".join(f"{key}: {value}\n" for key, value in model_config.items())
    handler = f"handler: {{buffered_reader: {str(settings.buffered_reader).lower()}}}\n"
    (src / "model_config.yaml").write_text(f"---\n{lines}{handler}")
    for path in src.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    os.chown(store, 1000, 1000)  # the image's model-server user writes the archive
    docker(
        "run", "--rm", "--user=1000", "--network=none", "--entrypoint=/bin/sh",
        f"--volume={src}:/model-src:ro", f"--volume={store}:/model-store",
        TORCHSERVE_IMAGE, "-ec",
        f"torch-model-archiver --model-name={MODEL_NAME} --version=1.0"
        " --model-file=/model-src/model.py --serialized-file=/model-src/model.pth"
        " --handler=/model-src/handler.py --extra-files=/model-src/platform"
        " --config-file=/model-src/model_config.yaml"
        " --export-path=/model-store --force",
    )  # fmt: skip
    return store


def torchserve_properties(
    settings: cfg.TorchServeSettings, inference_address: str = INFERENCE_TCP
) -> str:
    lines = [
        f"inference_address={inference_address}",
        "management_address=http://127.0.0.1:8081",
        "metrics_address=http://127.0.0.1:8082",
        "disable_token_authorization=true",
        "model_store=/home/model-server/model-store",
        f"load_models={MODEL_NAME}.mar",
        f"default_workers_per_model={settings.workers}",
    ]
    if settings.job_queue_size is not None:
        lines.append(f"job_queue_size={settings.job_queue_size}")
    if settings.netty_threads is not None:
        lines.append(f"number_of_netty_threads={settings.netty_threads}")
    if settings.netty_client_threads is not None:
        lines.append(f"netty_client_threads={settings.netty_client_threads}")
    if not settings.decode_input_request:
        lines.append("decode_input_request=false")
    if settings.prometheus_metrics:
        lines += ["metrics_mode=prometheus", "enable_metrics_api=true"]
        lines.append("model_metrics_auto_detect=true")
    if settings.native_io:
        lines.append("use_native_io=true")
    if settings.jvm_heap is not None:
        lines.append(f"vmargs=-Xmx{settings.jvm_heap} -XX:+UseContainerSupport")
    return "\n".join(lines) + "\n"


def log_config(settings: cfg.TorchServeSettings) -> str:
    """The torchserve role's log4j2.xml, rendered with ``settings``' level."""
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)
    env.filters["bool"] = bool  # Ansible's filter, for the booleans given here
    return env.from_string(LOG_TEMPLATE.read_text()).render(
        ansible_managed="benchmarks/run.py",
        torchserve_log_level=settings.log_level,
        torchserve_access_log=settings.access_log,
    )


def start_torchserve(
    name: str,
    port: int,
    work: Path,
    settings: cfg.TorchServeSettings,
    socket_dir: Path | None = None,
) -> Endpoint:
    """TorchServe with ``settings``: on TCP, published on ``port``; or, given ``socket_dir``,
    on a Unix socket there (as the torchserve role serves nginx), with nothing published."""
    store = write_model_store(work, settings)
    properties = work / "config.properties"
    address = f"unix:{INFERENCE_SOCKET}" if socket_dir else INFERENCE_TCP
    properties.write_text(torchserve_properties(settings, address))
    mounts = [
        f"--mount=type=bind,source={properties},target=/home/model-server/config.properties,readonly",
        f"--mount=type=bind,source={store},target=/home/model-server/model-store,readonly",
    ]
    options = ["--ts-config=/home/model-server/config.properties", "--disable-token-auth"]
    if settings.log_level is not None:
        log4j2 = work / "log4j2.xml"
        log4j2.write_text(log_config(settings))
        log4j2.chmod(0o644)
        mounts.append(f"--mount=type=bind,source={log4j2},target={LOG_CONFIG},readonly")
        options.append(f"--log-config={LOG_CONFIG}")
    properties.chmod(0o644)
    if socket_dir is None:
        where = [f"--publish=127.0.0.1:{port}:8080"]
        entrypoint = ["--entrypoint=torchserve", TORCHSERVE_IMAGE]
    else:
        # A socket nginx's user may connect to: the torchserve role starts it the same way.
        where = [f"--volume={socket_dir}:{SOCKET_DIR}", "--network=none"]
        entrypoint = ["--entrypoint=/bin/sh", TORCHSERVE_IMAGE, "-c",
                      'umask 0000 && exec torchserve "$@"', "torchserve"]  # fmt: skip
    docker(
        "run", "-d", f"--name={name}", *where, *mounts, *entrypoint,
        "--start", "--foreground", *options,
    )  # fmt: skip
    return Endpoint(name, port, 8080, f"/predictions/{MODEL_NAME}")


def start_fastapi(name: str, port: int) -> Endpoint:
    docker(
        "run", "-d", f"--name={name}", f"--publish=127.0.0.1:{port}:8000",
        f"--mount=type=bind,source={MODEL_DIR},target=/model,readonly",
        f"--mount=type=bind,source={PACKAGE_DIR},target=/opt/platform/modelserve,readonly",
        "--env=PYTHONPATH=/opt/platform",
        FASTAPI_SPEC.tag, "--workers", str(cfg.FASTAPI_WORKERS),
    )  # fmt: skip
    return Endpoint(name, port, 8000, "/predict")


def bare_nginx_config(nginx: cfg.NginxSettings, servers: str) -> str:
    """nginx.conf with the nginx role's connection settings, no log, and ``servers``."""
    return f"""user nginx;
worker_processes {nginx.worker_processes};
worker_rlimit_nofile {nginx.worker_connections * 2};
error_log /var/log/nginx/error.log warn;
pid /var/run/nginx.pid;
events {{ worker_connections {nginx.worker_connections}; }}
http {{
    default_type application/json;
    access_log off;
    tcp_nodelay on;
    keepalive_timeout {nginx.keepalive_timeout};
{servers}}}
"""


def start_nginx_floor(name: str, port: int, work: Path, nginx: cfg.NginxSettings) -> Endpoint:
    """nginx with the role's connection settings, answering a fixed JSON body itself."""
    servers = """    server {
        listen 80 default_server;
        location = /predict { return 200 '{"output": 0.6496530771255493}\\n'; }
    }
"""
    return start_nginx(name, port, work, bare_nginx_config(nginx, servers))


def start_nginx(name: str, port: int, work: Path, config: str, *volumes: str) -> Endpoint:
    """nginx running ``config`` (its nginx.conf), published on ``port``, with ``volumes``."""
    conf = work / "nginx.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(config)
    conf.chmod(0o644)
    docker(
        "run", "-d", f"--name={name}", f"--publish=127.0.0.1:{port}:80",
        *(f"--volume={volume}" for volume in volumes),
        f"--mount=type=bind,source={conf},target=/etc/nginx/nginx.conf,readonly",
        NGINX_IMAGE,
    )  # fmt: skip
    return Endpoint(name, port, 80, "/predict")


def proxy_floor_config(nginx: cfg.NginxSettings) -> str:
    """nginx.conf of the proxy floor (8): the role's connection settings and what production
    sends TorchServe (its headers, on its socket, over kept-alive connections), and nothing
    else: no log, no retry, no rule. What any nginx hop in front of TorchServe costs here."""
    added = "".join(
        f'            proxy_set_header {name} "{value}";\n'
        for name, value in (header.split(": ", 1) for header in cfg.PRODUCTION_HEADERS)
    )
    return bare_nginx_config(
        nginx,
        f"""    upstream torchserve {{
        server unix:{INFERENCE_SOCKET} max_fails=0;
        keepalive {nginx.upstream_keepalive};
    }}
    server {{
        listen 80 default_server;
        location = /predict {{
            proxy_http_version 1.1;
            proxy_pass_request_headers off;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
{added}            proxy_set_header Content-Type "application/json";
            proxy_pass http://torchserve/predictions/{MODEL_NAME};
        }}
    }}
""",
    )


def start_proxy_floor(
    name: str, port: int, work: Path, nginx: cfg.NginxSettings, settings: cfg.TorchServeSettings
) -> Endpoint:
    """(8): TorchServe with ``settings`` on a Unix socket, behind a bare nginx."""
    sockets = work / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    os.chown(sockets, 1000, 1000)  # the image's model-server user creates the socket
    start_torchserve(name + FLOOR_TORCHSERVE_SUFFIX, port, work / "torchserve", settings, sockets)
    return start_nginx(name, port, work, proxy_floor_config(nginx), f"{sockets}:{SOCKET_DIR}")


def candidate_containers(candidate: cfg.Candidate) -> list[str]:
    """The benchmark's own containers of a candidate, the one wrk enters first."""
    name = CONTAINER_PREFIX + candidate.key
    if candidate.number == report.PROXY_FLOOR:
        return [name, name + FLOOR_TORCHSERVE_SUFFIX]
    return [name]


# --- request paths: where the load generator stands, which cgroups are counted --------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def container_id(name: str, vm: str | None = None) -> str:
    argv = ("inspect", "-f", "{{.Id}}", name)
    return (docker("exec", vm, "docker", *argv) if vm else docker(*argv)).stdout.strip()


def cgroup_dir(cid: str) -> Path:
    """The CPU-accounting cgroup of a container, seen from this host.

    Containers of the VM's Docker are there too: the VM shares this host's cgroup
    hierarchy (molecule.yml: cgroupns host), so its containers' cgroups sit beside ours.
    """
    usage_file = "cpu.stat" if cgroup_v2() else "cpuacct.usage"
    bases = [CGROUP_ROOT] if cgroup_v2() else [CGROUP_ROOT / "cpuacct", CGROUP_ROOT / "cpu,cpuacct"]
    for base in bases:
        for relative in (f"docker/{cid}", f"system.slice/docker-{cid}.scope"):
            if (base / relative / usage_file).exists():
                return base / relative
    for base in bases:
        for match in base.glob(f"**/*{cid}*"):
            if (match / usage_file).exists():
                return match
    raise RuntimeError(f"no cgroup found for container {cid[:12]} under {CGROUP_ROOT}")


def cpu_usage_us(cgroup: Path) -> int:
    """CPU time used so far by every process of ``cgroup``, in µs."""
    v2 = cgroup_v2()
    try:
        text = (cgroup / ("cpu.stat" if v2 else "cpuacct.usage")).read_text()
    except FileNotFoundError:
        raise RuntimeError(
            f"the cgroup {cgroup} is gone: a container on the request path stopped mid-run"
        ) from None
    return report.parse_cpu_usage_us(text, v2)


def a_process_of(cgroup: Path) -> int:
    """The host PID of the oldest process of ``cgroup``, to enter its network namespace:
    nginx's master, not a worker that a reload ends (looked up again before each run)."""
    pids = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    if not pids:
        raise RuntimeError(f"no process in {cgroup}")
    return min(pids, key=lambda pid: int(Path(f"/proc/{pid}/stat").read_text().split()[21]))


@dataclass
class Running:
    """A started candidate: how the load reaches it and what its requests cost."""

    number: int
    key: str
    title: str
    url: str  # as the load generator sees it
    netns_cgroup: Path | None  # wrk enters the network namespace of this cgroup; None: this host's
    # container -> cgroup, for every process on the request path (the load generator is not)
    cpu_cgroups: dict[str, Path]
    path: str  # for the report
    # containers working per request off the path (the stack's mtail): shown, not counted
    off_path_cgroups: dict[str, Path] = field(default_factory=dict)
    headers: tuple[str, ...] = ()  # added to each request, as "Name: value"
    samples: dict[int, list[report.Sample]] = field(default_factory=dict)


def running(
    candidate: cfg.Candidate, endpoint: Endpoint, mode: str, path_containers: list[str],
    vm: str | None = None,
) -> Running:  # fmt: skip
    cgroups = {name: cgroup_dir(container_id(name, vm)) for name in path_containers}
    where = f"in the VM {vm}" if vm else "on this host"
    counted = " + ".join(path_containers)
    names = [header.split(":", 1)[0] for header in candidate.headers]
    sent = f" with {', '.join(f'`{name}`' for name in names)}" if names else ""
    if mode == "netns":
        path = (
            f"wrk in the network namespace of `{endpoint.container}` ({where}) → "
            f"127.0.0.1:{endpoint.inner_port}{sent}; CPU counted: {counted}"
        )
        return Running(candidate.number, candidate.key, candidate.title, endpoint.inner_url,
                       cgroups[path_containers[0]], cgroups, path,
                       headers=candidate.headers)  # fmt: skip
    proxies = "two docker-proxy hops (this host → VM → nginx)" if vm else "one docker-proxy hop"
    path = (
        f"wrk on this host → 127.0.0.1:{endpoint.published_port}{sent}, {proxies}; "
        f"CPU counted: {counted} (the proxies are not)"
    )
    return Running(candidate.number, candidate.key, candidate.title, endpoint.published_url,
                   None, cgroups, path, headers=candidate.headers)  # fmt: skip


def stack_endpoint(args: argparse.Namespace, number: int) -> tuple[Endpoint, list[str]]:
    """The VM's nginx and the TorchServe colours behind it: production's, and in a canary
    step (7) the idle one's too."""
    fact = docker("exec", args.instance, "cat", "/etc/ansible/facts.d/modelserve.fact")
    colour = json.loads(fact.stdout)["active_colour"]
    endpoint = (
        Endpoint("nginx", args.stack_https_port, 443, "/predict", "https")
        if number == report.STACK_HTTPS
        else Endpoint("nginx", args.stack_port, 80, "/predict")
    )
    colours = cfg.colour_containers() if number == report.STACK_CANARY else [f"torchserve-{colour}"]
    return endpoint, ["nginx", *colours]


class CanaryRouting:
    """Production's routing with and without the canary weight, for candidate (7).

    Both versions are written by the nginx role's own route tasks (benchmarks/canary.yml,
    two Ansible runs at the start). Each round then puts one or the other back in place
    and reloads nginx with the role's reloader: a second, where an Ansible run takes 18.
    """

    def __init__(self, instance: str, weight: int) -> None:
        self.instance = instance
        self.routing_file = f"{cfg.nginx_config_dir()}/conf.d/upstreams.conf"
        self.canary_text = self._route(weight)
        try:
            self.production_text = self._route(0)
        except Exception as err:
            raise RuntimeError(
                f"{err}\nThe canary routing may still be live: route back with "
                "`ansible-playbook benchmarks/canary.yml -e canary_weight=0`"
            ) from err

    def _route(self, weight: int) -> str:
        log(f"routing {weight} % of /predict to the idle colour (benchmarks/canary.yml)")
        done = subprocess.run(
            [ANSIBLE_PLAYBOOK, str(DATA_DIR / "canary.yml"), "-e", f"canary_weight={weight}"],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            why = done.stdout.split("PLAY RECAP")[0][-2000:]  # the failed task, not the timings
            raise RuntimeError(f"benchmarks/canary.yml failed:\n{why}")
        return docker("exec", self.instance, "cat", self.routing_file).stdout

    def _install(self, text: str) -> None:
        subprocess.run(
            ["docker", "exec", "-i", self.instance, "sh", "-c", f"cat > {self.routing_file}"],
            input=text, text=True, capture_output=True, check=True,
        )  # fmt: skip
        docker("exec", self.instance, NGINX_RELOADER, "--container", "nginx")
        # The previous workers may have accepted a connection before they stop: one the
        # load generator opens then is closed under it. The role's reload drains; this waits.
        deadline = time.monotonic() + 30
        while self._workers_shutting_down():
            if time.monotonic() > deadline:
                raise RuntimeError("nginx's previous workers still run 30 s after a reload")
            time.sleep(0.2)

    def _workers_shutting_down(self) -> bool:
        listing = docker(
            "exec", self.instance, "docker", "exec", "nginx", "sh", "-c",
            'cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\\0" "\\n"',
        ).stdout  # fmt: skip
        return "worker process is shutting down" in listing

    def canary(self) -> None:
        self._install(self.canary_text)

    def production_only(self) -> None:
        self._install(self.production_text)


# --- load and memory ------------------------------------------------------------------


def run_wrk(candidate: Running, connections: int, duration_s: int) -> tuple[report.LoadResult, str]:
    headers = [arg for header in candidate.headers for arg in ("-H", header)]
    argv = [
        "wrk", "-t", str(cfg.WRK_THREADS), "-c", str(connections), "-d", f"{duration_s}s",
        "--timeout", f"{cfg.WRK_TIMEOUT_S}s", "--latency", "-s", str(POST_SCRIPT), *headers,
        candidate.url,
    ]  # fmt: skip
    netns_cgroup = candidate.netns_cgroup
    if netns_cgroup is not None:
        argv = ["nsenter", f"--target={a_process_of(netns_cgroup)}", "--net", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return report.parse_wrk(done.stdout), done.stdout


def measure_once(
    candidate: Running, connections: int, args: argparse.Namespace, tag: str
) -> report.Sample:
    cgroups = {**candidate.cpu_cgroups, **candidate.off_path_cgroups}
    before = {name: cpu_usage_us(c) for name, c in cgroups.items()}
    load, raw = run_wrk(candidate, connections, args.duration)
    used = {name: cpu_usage_us(c) - before[name] for name, c in cgroups.items()}
    on_path = {name: used[name] for name in candidate.cpu_cgroups}
    off_path = {name: used[name] for name in candidate.off_path_cgroups}
    sample = report.Sample(load, sum(on_path.values()), on_path, off_path)
    log(
        f"  ({candidate.number}) {connections} conns: {load.successful_rps:,.0f} successful "
        f"req/s, {load.failed} failed, p99 {load.p99_ms:.1f} ms, "
        f"{sample.cpu_us_per_request or 0:,.0f} CPU-µs/request"
    )
    (args.out / "wrk").mkdir(exist_ok=True)
    (args.out / "wrk" / f"{tag}-{candidate.number}-{connections}.txt").write_text(raw)
    return sample


def memory_sample(instance: str) -> dict[str, int]:
    """Memory per container of the VM ``instance``."""
    fmt = "{{.Name}}\t{{.MemUsage}}"
    out = docker("exec", instance, "docker", "stats", "--no-stream", "--format", fmt)
    return report.parse_docker_stats(out.stdout)


def container_rss(name: str) -> int:
    """Resident memory of a container's processes on this host, in bytes.

    (This machine's Docker reports no memory in `docker stats`; the VM's does.)
    """
    top = docker("top", name, "-o", "pid,rss", check=False)
    return report.parse_rss_kib(top.stdout) * 1024


def delayed(delay_s: float, action: object) -> threading.Thread:
    def body() -> None:
        time.sleep(delay_s)
        action()  # type: ignore[operator]

    return threading.Thread(target=body, daemon=True)


def rotation(items: list[T], round_index: int) -> list[T]:
    """The candidates in the order of one round: each round starts one further on, so
    that no candidate always runs right after the same one."""
    shift = round_index % len(items) if items else 0
    return items[shift:] + items[:shift]


# --- the run ------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.platform(),
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(meminfo[1]) / 1024**2, 1),
        "os": os_name,
        "kernel": platform.release(),
        "load_average_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="+", choices=range(1, 9), metavar="N")
    parser.add_argument("--connections", type=int, nargs="+", default=list(cfg.CONNECTIONS))
    parser.add_argument("--rounds", type=int, default=cfg.ROUNDS, help="interleaved rounds")
    parser.add_argument("--duration", type=int, default=cfg.DURATION_S, help="s per wrk run")
    parser.add_argument("--warmup", type=int, default=cfg.WARMUP_S, help="s of warm-up")
    parser.add_argument(
        "--path",
        choices=("netns", "published"),
        default="netns",
        help="netns: wrk inside each candidate's network namespace (no proxy on any path); "
        "published: wrk on this host through the published ports (the test bed's proxies)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting of candidates 4 and 8 (e.g. batch_size=16), for trying one out",
    )
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument(
        "--instance", default=os.environ.get("MODELSERVE_INSTANCE", "modelserve-vm")
    )
    parser.add_argument(
        "--stack-port", type=int, default=int(os.environ.get("MODELSERVE_HTTP_PORT", "8080"))
    )
    parser.add_argument(
        "--stack-https-port",
        type=int,
        default=int(os.environ.get("MODELSERVE_HTTPS_PORT", "8443")),
    )
    parser.add_argument("--results", type=Path, default=DATA_DIR / "results")
    return parser.parse_args(argv)


def start_candidates(
    chosen: list[cfg.Candidate], args: argparse.Namespace, tuned: cfg.TorchServeSettings
) -> list[Running]:
    """Start every chosen candidate (they stay up for all rounds) and wait until each serves."""
    nginx = cfg.nginx_settings()
    started = []
    for candidate in chosen:
        if candidate.number in report.STACKS:
            endpoint, path_containers = stack_endpoint(args, candidate.number)
            stack = running(candidate, endpoint, args.path, path_containers, vm=args.instance)
            stack.off_path_cgroups = {
                name: cgroup_dir(container_id(name, args.instance)) for name in STACK_OFF_PATH
            }
            started.append(stack)
            continue
        containers = candidate_containers(candidate)
        name = containers[0]
        port = HOST_PORT[candidate.number]
        work = args.out / "work" / candidate.key
        for container in containers:
            remove_container(container)
        log(f"starting ({candidate.number}) {candidate.title}")
        if candidate.number == report.PROXY_FLOOR and candidate.torchserve is not None:
            endpoint = start_proxy_floor(name, port, work, nginx, candidate.torchserve)
        elif candidate.torchserve is not None:
            endpoint = start_torchserve(name, port, work, candidate.torchserve)
        elif candidate.key == "fastapi":
            endpoint = start_fastapi(name, port)
        else:
            endpoint = start_nginx_floor(name, port, work, nginx)
        started.append(running(candidate, endpoint, args.path, containers))
    for candidate in started:
        if candidate.number not in report.STACKS:
            wait_until_serving(candidate_published_url(candidate, args))
    return started


def candidate_published_url(candidate: Running, args: argparse.Namespace) -> str:
    if candidate.number in (report.STACK, report.STACK_CANARY):
        return f"http://127.0.0.1:{args.stack_port}/predict"
    if candidate.number == report.STACK_HTTPS:
        return f"https://127.0.0.1:{args.stack_https_port}/predict"
    path = urllib.parse.urlsplit(candidate.url).path
    return f"http://127.0.0.1:{HOST_PORT[candidate.number]}{path}"


def main(argv: list[str] | None = None) -> int:
    # A run stopped by SIGTERM (timeout, kill) still routes the canary back and removes
    # its containers: the `finally` below runs on SystemExit, not on a bare signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    malformed = [item for item in args.set if "=" not in item]
    if malformed:
        sys.exit(f"bench: --set takes NAME=VALUE, got {malformed}")
    try:
        tuned = cfg.tuned_torchserve().override(dict(item.split("=", 1) for item in args.set))
    except ValueError as err:
        sys.exit(f"bench: --set {err}")
    chosen = [c for c in cfg.candidates(tuned) if not args.only or c.number in args.only]
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing (apt-get install wrk)")
    for number, stack_url, variable in (
        (report.STACK, f"http://127.0.0.1:{args.stack_port}/predict", "MODELSERVE_HTTP_PORT"),
        (
            report.STACK_HTTPS,
            f"https://127.0.0.1:{args.stack_https_port}/predict",
            "MODELSERVE_HTTPS_PORT",
        ),
    ):
        if not any(c.number == number for c in chosen):
            continue
        try:
            wait_until_serving(stack_url, timeout_s=5)
        except TimeoutError:
            sys.exit(
                f"bench: the stack does not answer on {stack_url}: converge the VM first "
                f"(make demo) or set MODELSERVE_INSTANCE and {variable}"
            )
    if any(c.key == "fastapi" for c in chosen):
        build_images.CACHE.mkdir(exist_ok=True)
        build_images.build(FASTAPI_SPEC)

    args.out = args.results / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True)
    info = machine()
    log(f"results in {args.out}; load average {info['load_average_start']}")
    memory: dict[str, dict[str, int]] = {}
    candidate_memory: dict[str, int] = {}
    order: list[list[int]] = []
    started: list[Running] = []
    canary: CanaryRouting | None = None
    try:
        if any(c.number == report.STACK_CANARY for c in chosen):
            canary = CanaryRouting(args.instance, cfg.canary_weight())
        started = start_candidates(chosen, args, tuned)
        if any(c.number in report.STACKS for c in started):
            memory["idle"] = memory_sample(args.instance)
        for candidate in started:
            log(f"warm-up ({candidate.number}) {candidate.title}")
            with canary_step(canary, candidate):
                run_wrk(candidate, max(args.connections), args.warmup)
        for round_index in range(args.rounds):
            this_round = rotation(started, round_index)
            order.append([c.number for c in this_round])
            log(f"round {round_index + 1}/{args.rounds}: order {order[-1]}")
            for candidate in this_round:
                with canary_step(canary, candidate):
                    measure_candidate(candidate, round_index, args, memory, candidate_memory)
    finally:
        if canary is not None:
            try:
                canary.production_only()
            except (subprocess.CalledProcessError, RuntimeError) as err:
                log(f"production's routing is back in its file, but nginx did not reload: {err}")
        for candidate in chosen:
            if candidate.number not in report.STACKS:
                for name in candidate_containers(candidate):
                    logs = docker("logs", "--tail", "300", name, check=False)
                    (args.out / "logs").mkdir(exist_ok=True)
                    log_name = name.removeprefix(CONTAINER_PREFIX)
                    (args.out / "logs" / f"{candidate.number}-{log_name}.log").write_text(
                        logs.stdout + logs.stderr
                    )
                    remove_container(name)

    info["load_average_end"] = os.getloadavg()
    data = {
        "run": args.out.name,
        "label": args.label,
        "machine": info,
        "settings": {
            "torchserve_reference": cfg.REFERENCE_TORCHSERVE.__dict__,
            "torchserve_tuned": tuned.__dict__,
            "fastapi_workers": cfg.FASTAPI_WORKERS,
            "nginx": cfg.nginx_settings().__dict__,
            "load": {
                "tool": "wrk + benchmarks/post.lua",
                "threads": cfg.WRK_THREADS,
                "connections": sorted(args.connections),
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "timeout_s": cfg.WRK_TIMEOUT_S,
                "path": args.path,
            },
        },
        "order": order,
        "candidates": {
            str(c.number): {
                "title": c.title,
                "path": c.path,
                "runs": {str(n): [s.as_dict() for s in runs] for n, runs in c.samples.items()},
            }
            for c in started
        },
        "stack_memory_bytes": memory,
        "candidate_memory_under_load_bytes": candidate_memory,
    }
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = report.render(data)
    (args.out / "results.md").write_text(f"# Benchmark {args.out.name}\n\n{markdown}")
    titles, results = report.results_from_json(data)
    try:
        report.write_chart(args.out / "chart.png", titles, results)
    except ImportError:
        log("matplotlib is missing: no chart (pip install -r benchmarks/requirements.txt)")
    print(markdown)
    log(f"written {args.out}/results.md, results.json, chart.png")
    log(f"publish it in benchmarks/README.md: python -m modelserve.bench.report publish {args.out}")
    return 0


def measure_candidate(
    candidate: Running,
    round_index: int,
    args: argparse.Namespace,
    memory: dict[str, dict[str, int]],
    candidate_memory: dict[str, int],
) -> None:
    """One round's runs of a candidate, one per connection count."""
    for connections in sorted(args.connections):
        sampler = None
        if round_index == 0 and connections == max(args.connections):
            sampler = memory_sampler(candidate, args, memory, candidate_memory)
            sampler.start()
        sample = measure_once(candidate, connections, args, f"r{round_index + 1}")
        candidate.samples.setdefault(connections, []).append(sample)
        if sampler is not None:
            sampler.join()


@contextlib.contextmanager
def canary_step(canary: CanaryRouting | None, candidate: Running) -> Iterator[None]:
    """The canary weight in place while candidate (7) runs; production alone otherwise."""
    if canary is None or candidate.number != report.STACK_CANARY:
        yield
        return
    canary.canary()
    try:
        yield
    finally:
        canary.production_only()


def memory_sampler(
    candidate: Running,
    args: argparse.Namespace,
    memory: dict[str, dict[str, int]],
    candidate_memory: dict[str, int],
) -> threading.Thread:
    """Samples memory mid-way through the candidate's first run at the most connections."""

    def sample() -> None:
        if candidate.number == report.STACK:
            memory["under load"] = memory_sample(args.instance)
        elif candidate.number in (report.STACK_HTTPS, report.STACK_CANARY):
            pass  # the same containers as (5)
        else:
            candidate_memory[candidate.key] = sum(
                container_rss(name) for name in candidate.cpu_cgroups
            )

    return delayed(args.duration / 2, sample)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as failure:
        detail = (getattr(failure, "stderr", "") or "").strip()
        sys.exit(f"bench: {failure}" + (f"\n{detail}" if detail else ""))
