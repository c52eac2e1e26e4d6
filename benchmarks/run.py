#!/usr/bin/env python3
"""Benchmark: our stack against the HTTP floor, TorchServe as the reference project ran
it, FastAPI, and TorchServe with our settings, in one run, with one load tool.

Every candidate gets the same wrk load (post.lua: a JSON POST of the reference input) at
each connection count, after a warm-up, one candidate at a time so that they never
compete for the machine's cores. Candidates 1-4 run as containers on this machine's
Docker, published on 127.0.0.1; candidate 5 is the converged Molecule VM's nginx
(``MODELSERVE_INSTANCE``, ``MODELSERVE_HTTP_PORT``). Writes
``benchmarks/results/<timestamp>/`` with results.md, results.json and chart.png.

Usage: ``make bench`` or ``python benchmarks/run.py [--only 1 5] [--set batch_size=16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import build_images
import candidates as cfg
import jinja2
import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_DIR = REPO / "files" / "model"
POST_SCRIPT = HERE / "post.lua"
LOG_TEMPLATE = REPO / "roles" / "torchserve" / "templates" / "log4j2.xml.j2"
LOG_CONFIG = "/home/model-server/log4j2.xml"
TORCHSERVE_IMAGE = "modelserve-local/torchserve:0.12.0-cpu"
NGINX_IMAGE = "modelserve-local/nginx:1.27"
FASTAPI_SPEC = build_images.ImageSpec(
    "fastapi", "modelserve-local/fastapi-bench:latest", offline=False, root=HERE / "images"
)
CONTAINER_PREFIX = "modelserve-benchmark-"
HOST_PORT = {1: 18181, 2: 18182, 3: 18183, 4: 18184}
MODEL_NAME = "model"
BODY = json.dumps({"data": [0.2, 0.6]}).encode()


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check)


def remove_container(name: str) -> None:
    docker("rm", "-f", name, check=False)


def wait_until_serving(url: str, timeout_s: float = 180) -> None:
    """Until a POST of the reference input answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(
            url, data=BODY, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(1)


# --- the candidates' containers -------------------------------------------------------


def write_model_store(work: Path, settings: cfg.TorchServeSettings) -> Path:
    """A model store holding model.mar archived with ``settings``' workers and batching."""
    src = work / "model-src"
    store = work / "model-store"
    for directory in (src, store):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    for name in ("model.py", "model.pth", "handler.py"):
        shutil.copy(MODEL_DIR / name, src / name)
    model_config = {
        "minWorkers": settings.workers,
        "maxWorkers": settings.workers,
        "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay_ms,
        "responseTimeout": 30,
        "startupTimeout": 120,
    }
    lines = "".join(f"{key}: {value}\n" for key, value in model_config.items())
    (src / "model_config.yaml").write_text(f"---\n{lines}")
    for path in src.iterdir():
        path.chmod(0o644)
    os.chown(store, 1000, 1000)  # the image's model-server user writes the archive
    docker(
        "run", "--rm", "--user=1000", "--network=none", "--entrypoint=/bin/sh",
        f"--volume={src}:/model-src:ro", f"--volume={store}:/model-store",
        TORCHSERVE_IMAGE, "-ec",
        f"torch-model-archiver --model-name={MODEL_NAME} --version=1.0"
        " --model-file=/model-src/model.py --serialized-file=/model-src/model.pth"
        " --handler=/model-src/handler.py --config-file=/model-src/model_config.yaml"
        " --export-path=/model-store --force",
    )  # fmt: skip
    return store


def torchserve_properties(settings: cfg.TorchServeSettings) -> str:
    lines = [
        "inference_address=http://0.0.0.0:8080",
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


def start_torchserve(name: str, port: int, work: Path, settings: cfg.TorchServeSettings) -> str:
    store = write_model_store(work, settings)
    properties = work / "config.properties"
    properties.write_text(torchserve_properties(settings))
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
    docker(
        "run", "-d", f"--name={name}", f"--publish=127.0.0.1:{port}:8080", *mounts,
        "--entrypoint=torchserve", TORCHSERVE_IMAGE, "--start", "--foreground", *options,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/predictions/{MODEL_NAME}"


def start_fastapi(name: str, port: int) -> str:
    docker(
        "run", "-d", f"--name={name}", f"--publish=127.0.0.1:{port}:8000",
        f"--mount=type=bind,source={MODEL_DIR},target=/model,readonly",
        FASTAPI_SPEC.tag, "--workers", str(cfg.FASTAPI_WORKERS),
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/predict"


def start_nginx_floor(name: str, port: int, work: Path, nginx: cfg.NginxSettings) -> str:
    """nginx with the role's connection settings, answering a fixed JSON body itself."""
    conf = work / "nginx.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"""user nginx;
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
    server {{
        listen 80 default_server;
        location = /predict {{ return 200 '{{"output": 0.6496530771255493}}\\n'; }}
    }}
}}
"""
    )
    conf.chmod(0o644)
    docker(
        "run", "-d", f"--name={name}", f"--publish=127.0.0.1:{port}:80",
        f"--mount=type=bind,source={conf},target=/etc/nginx/nginx.conf,readonly",
        NGINX_IMAGE,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/predict"


# --- load and memory ------------------------------------------------------------------


def run_wrk(url: str, connections: int, duration_s: int) -> tuple[report.LoadResult, str]:
    argv = [
        "wrk", "-t", str(cfg.WRK_THREADS), "-c", str(connections), "-d", f"{duration_s}s",
        "--timeout", f"{cfg.WRK_TIMEOUT_S}s", "--latency", "-s", str(POST_SCRIPT), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    return report.parse_wrk(done.stdout), done.stdout


def memory_sample(instance: str | None, names: list[str] | None = None) -> dict[str, int]:
    """Memory per container: those of the VM ``instance``, or ``names`` on this host."""
    fmt = "{{.Name}}\t{{.MemUsage}}"
    if instance:
        out = docker("exec", instance, "docker", "stats", "--no-stream", "--format", fmt)
    else:
        out = docker("stats", "--no-stream", "--format", fmt, *(names or []))
    return report.parse_docker_stats(out.stdout)


def time_wait(instance: str | None) -> int:
    """Sockets in TIME-WAIT on this host, plus in the VM ``instance`` when given."""
    counts = [subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True)]
    if instance:
        counts.append(docker("exec", instance, "ss", "-Htan", "state", "time-wait", check=False))
    return sum(len(c.stdout.splitlines()) for c in counts)


def settle(instance: str | None) -> None:
    """Wait (90 s at most) until the connections of the last run have left TIME-WAIT.

    With client keep-alive off (nginx's default here) every request is a new connection
    from 127.0.0.1, and tens of thousands of them linger in TIME-WAIT for 60 s: a run
    started right after another would be slowed by the one before, not by its server.
    """
    deadline = time.monotonic() + 90
    while (count := time_wait(instance)) > cfg.SETTLED_TIME_WAIT and time.monotonic() < deadline:
        time.sleep(2)
    log(f"  {count} sockets in TIME-WAIT at start")


def container_rss(name: str) -> int:
    """Resident memory of a container's processes on this host, in bytes.

    (This machine's Docker reports no memory in `docker stats`; the VM's does.)
    """
    top = docker("top", name, "-o", "pid,rss", check=False)
    return report.parse_rss_kib(top.stdout) * 1024


def measure(
    url: str, args: argparse.Namespace, sampler: threading.Thread | None = None
) -> dict[int, report.LoadResult]:
    """Warm up, then one wrk run per connection count; ``sampler`` runs mid-way through
    the last (highest) one."""
    run_wrk(url, max(args.connections), args.warmup)
    runs: dict[int, report.LoadResult] = {}
    for connections in sorted(args.connections):
        settle(args.instance)
        is_last = connections == max(args.connections)
        if is_last and sampler is not None:
            sampler.start()
        result, raw = run_wrk(url, connections, args.duration)
        if is_last and sampler is not None:
            sampler.join()
        runs[connections] = result
        log(
            f"  {connections} conns: {result.successful_rps:,.0f} successful req/s, "
            f"{result.failed} failed, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
        )
        (args.out / "wrk").mkdir(exist_ok=True)
        (args.out / "wrk" / f"{args.current}-{connections}.txt").write_text(raw)
    return runs


def delayed(delay_s: float, action: object) -> threading.Thread:
    def body() -> None:
        time.sleep(delay_s)
        action()  # type: ignore[operator]

    return threading.Thread(target=body, daemon=True)


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
    parser.add_argument("--only", type=int, nargs="+", choices=range(1, 6), metavar="N")
    parser.add_argument("--connections", type=int, nargs="+", default=list(cfg.CONNECTIONS))
    parser.add_argument("--duration", type=int, default=cfg.DURATION_S, help="s per wrk run")
    parser.add_argument("--warmup", type=int, default=cfg.WARMUP_S, help="s of warm-up")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting of candidate 4 (e.g. batch_size=16), for trying one out",
    )
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument(
        "--instance", default=os.environ.get("MODELSERVE_INSTANCE", "modelserve-vm")
    )
    parser.add_argument(
        "--stack-port", type=int, default=int(os.environ.get("MODELSERVE_HTTP_PORT", "8080"))
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    tuned = cfg.tuned_torchserve().override(overrides)
    nginx = cfg.nginx_settings()
    chosen = [c for c in cfg.candidates(tuned) if not args.only or c.number in args.only]
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing (apt-get install wrk)")
    stack_url = f"http://127.0.0.1:{args.stack_port}/predict"
    if any(c.number == report.STACK for c in chosen):
        try:
            wait_until_serving(stack_url, timeout_s=5)
        except TimeoutError:
            sys.exit(
                f"bench: the stack does not answer on {stack_url}: converge the VM first "
                "(molecule converge) or set MODELSERVE_INSTANCE and MODELSERVE_HTTP_PORT"
            )
    if any(c.key == "fastapi" for c in chosen):
        build_images.CACHE.mkdir(exist_ok=True)
        build_images.build(FASTAPI_SPEC)

    args.out = args.results / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True)
    info = machine()
    log(f"results in {args.out}; load average {info['load_average_start']}")
    results: report.Results = {}
    memory: dict[str, dict[str, int]] = {}
    candidate_memory: dict[str, int] = {}
    for candidate in chosen:
        args.current = f"{candidate.number}-{candidate.key}"
        log(f"({candidate.number}) {candidate.title}")
        if candidate.number == report.STACK:
            memory["idle"] = memory_sample(args.instance)

            def sample_stack() -> None:
                memory["under load"] = memory_sample(args.instance)

            results[candidate.number] = measure(
                stack_url, args, delayed(args.duration / 2, sample_stack)
            )
            continue
        name = CONTAINER_PREFIX + candidate.key
        port = HOST_PORT[candidate.number]
        work = args.out / "work" / candidate.key
        remove_container(name)
        try:
            if candidate.torchserve is not None:
                url = start_torchserve(name, port, work, candidate.torchserve)
            elif candidate.key == "fastapi":
                url = start_fastapi(name, port)
            else:
                url = start_nginx_floor(name, port, work, nginx)
            wait_until_serving(url)

            def sample_candidate(key: str = candidate.key, container: str = name) -> None:
                candidate_memory[key] = container_rss(container)

            results[candidate.number] = measure(
                url, args, delayed(args.duration / 2, sample_candidate)
            )
        finally:
            logs = docker("logs", "--tail", "300", name, check=False)
            (args.out / "logs").mkdir(exist_ok=True)
            (args.out / "logs" / f"{args.current}.log").write_text(logs.stdout + logs.stderr)
            remove_container(name)

    info["load_average_end"] = os.getloadavg()
    titles = {c.number: c.title for c in chosen}
    peak = max((sum(m.values()) for m in memory.values()), default=None)
    checks = report.targets(results, peak)
    settings = {
        "torchserve_reference": cfg.REFERENCE_TORCHSERVE.__dict__,
        "torchserve_tuned": tuned.__dict__,
        "fastapi_workers": cfg.FASTAPI_WORKERS,
        "nginx": nginx.__dict__,
        "load": {
            "tool": "wrk + benchmarks/post.lua",
            "threads": cfg.WRK_THREADS,
            "connections": sorted(args.connections),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "timeout_s": cfg.WRK_TIMEOUT_S,
        },
    }
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "label": args.label,
                "machine": info,
                "settings": settings,
                "results": {
                    str(n): {
                        "title": titles[n],
                        "runs": {str(c): r.as_dict() for c, r in runs.items()},
                    }
                    for n, runs in results.items()
                },
                "stack_memory_bytes": memory,
                "candidate_memory_under_load_bytes": candidate_memory,
                "targets": [t.__dict__ for t in checks],
            },
            indent=2,
        )
        + "\n"
    )
    markdown = "\n\n".join(
        [
            f"# Benchmark {args.out.name}" + (f": {args.label}" if args.label else ""),
            f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['os']}, "
            f"kernel {info['kernel']}; load average at start {info['load_average_start']}, "
            f"at end {info['load_average_end']}. Load: wrk, {cfg.WRK_THREADS} threads, "
            f"{args.duration} s per run after a {args.warmup} s warm-up, POST of "
            '`{"data": [0.2, 0.6]}`.',
            f"Tuned TorchServe (4): `{tuned}`",
            report.results_table(titles, results),
            report.ratios_table(results),
            report.targets_table(checks),
            report.memory_table(memory) if memory else "Stack memory: not measured.",
            "Candidates' RSS under load (MiB): "
            + (
                ", ".join(f"{k} {v / 1024**2:,.0f}" for k, v in candidate_memory.items())
                or "not measured"
            ),
        ]
    )
    (args.out / "results.md").write_text(markdown + "\n")
    try:
        report.write_chart(args.out / "chart.png", titles, results)
    except ImportError:
        log("matplotlib is missing: no chart (pip install -r benchmarks/requirements.txt)")
    print(markdown)
    log(f"written {args.out}/results.md, results.json, chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
