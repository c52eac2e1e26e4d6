"""The benchmark (modelserve.bench): reading wrk and docker stats, ratios, targets, tables."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from modelserve.bench import candidates, report, run

WRK_OUTPUT = """Running 20s test @ http://127.0.0.1:8095/predict
  2 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.12ms   20.01ms 301.00ms   80.00%
  Latency Distribution
     50%   90.00ms
     75%  100.00ms
     90%  120.00ms
     99%  180.00ms
  40000 requests in 20.00s, 6.00MB read
  Non-2xx or 3xx responses: 30
Requests/sec:   2000.00
Transfer/sec:    307.20KB
BENCH_RESULT {"requests": 40000, "duration_us": 20000000, "errors_connect": 0, \
"errors_read": 5, "errors_write": 0, "errors_status": 30, "errors_timeout": 5, \
"p50_us": 90000, "p90_us": 120000, "p99_us": 180500, "max_us": 301000}
"""


def result(rps: float, failed: int = 0, p99_ms: float = 50.0) -> report.LoadResult:
    return report.LoadResult(
        requests=int(rps * 10) + failed,
        duration_s=10.0,
        failed=failed,
        p50_ms=10.0,
        p90_ms=20.0,
        p99_ms=p99_ms,
        max_ms=200.0,
    )


def test_parse_wrk_counts_every_failure_and_converts_units() -> None:
    r = report.parse_wrk(WRK_OUTPUT)
    assert r.requests == 40000
    assert r.duration_s == 20.0
    assert r.failed == 40  # 30 non-2xx + 5 read errors + 5 timeouts
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms) == (90.0, 120.0, 180.5, 301.0)
    assert r.rps == 2000.0
    assert r.successful_rps == pytest.approx((40000 - 40) / 20)


def test_parse_wrk_without_result_line_says_why() -> None:
    with pytest.raises(ValueError, match=r"post\.lua"):
        report.parse_wrk("Running 20s test @ http://127.0.0.1/\n")


def test_successful_rps_never_negative() -> None:
    r = report.LoadResult(10, 1.0, 15, 1, 1, 1, 1)
    assert r.successful_rps == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0B", 0),
        ("512kB", 512_000),
        ("1.5KiB", 1536),
        ("123.4MiB", round(123.4 * 1024**2)),
        ("2GiB", 2 * 1024**3),
        (" 7MB ", 7_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert report.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12", "MiB", "1.2XB"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError):
        report.parse_size(text)


def test_parse_docker_stats() -> None:
    output = "nginx\t12.5MiB / 256MiB\ntorchserve-green\t1.1GiB / 2GiB\n\n"
    assert report.parse_docker_stats(output) == {
        "nginx": round(12.5 * 1024**2),
        "torchserve-green": round(1.1 * 1024**3),
    }


def test_parse_rss_kib() -> None:
    output = "PID                 RSS\n7489                6712\n7619                2784\n"
    assert report.parse_rss_kib(output) == 6712 + 2784
    assert report.parse_rss_kib("") == 0


def sample(rps: float, failed: int = 0, p99_ms: float = 50.0, cpu_us_per_request: float = 100.0):
    load = result(rps, failed, p99_ms)
    return report.Sample(load, cpu_us_per_request * load.successful)


def full_run(rounds: int = 3) -> report.Results:
    """Seven candidates, the same figures in every round."""
    figures = {
        1: {100: (8000, 0, 10, 20), 200: (8000, 0, 10, 20)},
        2: {100: (1600, 0, 90, 400), 200: (900, 9000, 900, 500)},
        3: {100: (1000, 0, 60, 600), 200: (1000, 0, 80, 600)},
        4: {100: (2500, 0, 40, 300), 200: (2500, 0, 50, 300)},
        5: {100: (2200, 0, 80, 330), 200: (2100, 0, 90, 340)},
        6: {100: (1900, 0, 85, 380), 200: (1800, 0, 95, 390)},
        8: {100: (2400, 0, 45, 320), 200: (2300, 0, 55, 320)},
    }
    return {
        n: {c: [sample(*f) for _ in range(rounds)] for c, f in runs.items()}
        for n, runs in figures.items()
    }


def test_sample_cpu_per_successful_request() -> None:
    load = report.LoadResult(1000, 10.0, 200, 1, 1, 1, 1)
    assert report.Sample(load, 80_000).cpu_us_per_request == 100
    assert report.Sample(load, None).cpu_us_per_request is None
    assert report.Sample(report.LoadResult(5, 1.0, 5, 1, 1, 1, 1), 9).cpu_us_per_request is None


@pytest.mark.parametrize(
    ("text", "v2", "expected"),
    [
        ("123456789\n", False, 123456),
        ("usage_usec 42\nuser_usec 30\nsystem_usec 12\n", True, 42),
    ],
)
def test_parse_cpu_usage_of_both_cgroup_versions(text: str, v2: bool, expected: int) -> None:
    assert report.parse_cpu_usage_us(text, v2) == expected


def test_parse_cpu_usage_refuses_a_cpu_stat_without_usage() -> None:
    with pytest.raises(ValueError, match="usage_usec"):
        report.parse_cpu_usage_us("user_usec 30\n", True)


def test_ratios_are_computed_round_by_round() -> None:
    results = full_run()
    # Round 2: a co-tenant slowed both (4) and (5) alike; the ratio of that round holds.
    results[4][200][1] = sample(1250, cpu_us_per_request=300)
    results[5][200][1] = sample(1050, cpu_us_per_request=340)
    assert report.round_ratios(results, 5, 4, 200, "successful_rps") == pytest.approx(
        [2100 / 2500, 1050 / 1250, 2100 / 2500]
    )
    spread = report.ratio_spread(results, 5, 4, 200)
    assert (spread.median, spread.low, spread.high) == pytest.approx((0.84, 0.84, 0.84))
    cpu = report.ratio_spread(results, 5, 4, 200, "cpu_us_per_request")
    assert cpu.median == pytest.approx(340 / 300)
    assert report.ratio_spread(results, 5, 2, 300) is None
    assert report.ratio_spread({5: {200: [sample(10)]}}, 5, 2, 200) is None


def test_spread_is_median_min_max_of_the_rounds() -> None:
    results = {5: {100: [sample(900), sample(1000), sample(3000)]}}
    spread = report.spread(results, 5, 100, "successful_rps")
    assert (spread.median, spread.low, spread.high, spread.n) == (1000, 900, 3000, 3)
    assert report.Spread.of([None, None]) is None


def test_targets_all_met() -> None:
    checks = report.targets(full_run(), memory_peak_bytes=2 * 1024**3)
    assert [t.met for t in checks] == [True] * 7
    assert not any(t.spread_crosses for t in checks)


def test_targets_report_what_is_missed_or_not_measured() -> None:
    results = full_run()
    results[5] = {
        100: [sample(900, p99_ms=150)],
        200: [sample(800, failed=3, cpu_us_per_request=500)],
    }
    checks = {t.name: t for t in report.targets(results, memory_peak_bytes=None)}
    assert checks["(5) failed requests, all rounds and connections"].met is False
    assert checks["(5)/(4) CPU-µs per request at 200 connections"].met is False
    assert checks["(5)/(3) successful req/s at 200 connections"].met is False
    assert checks["(5) p99 at 100 connections, ms"].met is False
    assert checks["stack memory, idle or under load, GiB"].met is None
    results[6] = {200: [sample(700, failed=1)]}
    assert checks["(6) failed requests, all rounds and connections"].met is True
    assert report.targets(results, None)[1].met is False
    del results[5], results[6]
    assert all(t.met is None for t in report.targets(results, None))


def test_a_target_says_when_rounds_fall_on_both_sides() -> None:
    results = full_run()
    # (5)/(3) at 200 connections per round: 2.1, 1.1, 2.1: median met, one round not.
    results[3][200][1] = sample(1900)
    check = next(t for t in report.targets(results, None) if t.name.startswith("(5)/(3)"))
    assert check.met is True and check.spread_crosses is True
    assert "some rounds on the other side" in report.targets_table([check])


def test_tables() -> None:
    results = full_run()
    results[2][200][0] = sample(700, failed=9000, p99_ms=700, cpu_us_per_request=450)
    titles = {n: f"candidate {n}" for n in results}
    table = report.results_table(titles, results)
    assert table.count("\n") == 2 + 2 * 7 - 1
    assert (
        "| 2 | candidate 2 | 200 | 3 | 900 (700-900) | 500 (450-500) | "
        "900.0 (700.0-900.0) | 27,000 |" in table
    )
    ratios = report.ratios_table(results)
    assert "| (5)/(4) | 0.88 | 1.10 | 0.84 | 1.13 |" in ratios
    assert "| (6)/(5) | 0.86 | 1.15 | 0.86 | 1.15 |" in ratios
    # The proxy floor against TorchServe alone, and the stack against the proxy floor.
    assert "| (8)/(4) | 0.96 | 1.07 | 0.92 | 1.07 |" in ratios
    assert "| (5)/(8) | 0.92 | 1.03 | 0.91 | 1.06 |" in ratios
    targets = report.targets_table(report.targets(results, None))
    assert "not measured" in targets and "**no**" not in targets
    memory = report.memory_table({"idle": {"a": 1024**2}, "under load": {"a": 3 * 1024**2}})
    assert "| a | 1 | 3 |" in memory and "| sum | **1** | **3** |" in memory


def test_cpu_split_shows_each_container_of_a_multi_container_path() -> None:
    results = full_run()
    load = result(2000)  # 20,000 successful requests
    results[5][200] = [
        report.Sample(load, 6e6, {"nginx": 1e6, "torchserve-green": 5e6}),
        report.Sample(load, 8e6, {"nginx": 2e6, "torchserve-green": 6e6}),
    ]
    split = report.cpu_split_table({n: f"c{n}" for n in results}, results)
    assert "| 5 | c5 | 200 | nginx | 75 (50-100) |" in split
    assert "| 5 | c5 | 200 | torchserve-green | 275 (250-300) |" in split
    assert report.cpu_split_table({n: f"c{n}" for n in results}, full_run()) is None


def test_cpu_off_the_path_is_shown_and_not_counted() -> None:
    results = full_run()
    load = result(2000)  # 20,000 successful requests
    on_path = {"nginx": 1e6, "torchserve-green": 5e6}
    results[5][200] = [report.Sample(load, 6e6, on_path, {"route-metrics": 4e5})] * 2
    assert results[5][200][0].cpu_us_per_request == 300
    split = report.cpu_split_table({n: f"c{n}" for n in results}, results)
    assert "| 5 | c5 | 200 | route-metrics (off the path, not counted) | 20 |" in split
    again = report.Sample.from_dict(results[5][200][0].as_dict())
    assert again.cpu_us_off_path == {"route-metrics": 4e5}


def results_json(results: report.Results) -> dict:
    return {
        "run": "20261130T000000Z",
        "label": "",
        "machine": {
            "cpus": 2, "memory_gib": 23.5, "os": "Debian", "kernel": "6",
            "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 2.0, 2.0],
        },
        "settings": {
            "torchserve_tuned": {"workers": 1, "batch_size": 16},
            "load": {"threads": 2, "rounds": 3, "duration_s": 8, "path": "netns"},
        },
        "candidates": {
            str(n): {
                "title": f"candidate {n}",
                "path": f"path of {n}",
                "runs": {str(c): [s.as_dict() for s in samples] for c, samples in runs.items()},
            }
            for n, runs in results.items()
        },
        "stack_memory_bytes": {"idle": {"nginx": 1024**2}},
    }  # fmt: skip


def test_results_json_round_trips_into_the_report() -> None:
    results = full_run()
    data = json.loads(json.dumps(results_json(results)))
    titles, loaded = report.results_from_json(data)
    assert loaded == results
    assert titles[5] == "candidate 5"
    markdown = report.render(data)
    assert "- (5) candidate 5: path of 5" in markdown
    assert report.results_table(titles, results) in markdown
    assert report.targets_table(report.targets(results, 1024**2)) in markdown


def test_publish_writes_latest_and_the_readme_section(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(results_json(full_run())))
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Bench\n\n{report.README_BEGIN}\nold table\n{report.README_END}\n\nTail.\n"
    )
    latest = tmp_path / "latest.json"
    report.publish(run_dir, latest, readme)
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{report.README_END}\n\nTail.\n")
    assert report.render(json.loads(latest.read_text())) in text
    with pytest.raises(ValueError, match="markers"):
        report.readme_with_results("no markers here", "table")


def test_the_readme_shows_the_published_results_unedited() -> None:
    """benchmarks/README.md's table is what report.py renders from latest.json."""
    published = json.loads(report.LATEST.read_text())
    readme = report.README.read_text()
    assert report.readme_with_results(readme, report.render(published)) == readme


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    results = full_run()
    report.write_chart(path, {n: f"c{n}" for n in results}, results)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounds_rotate_the_order() -> None:
    items = [1, 2, 3]
    orders = [run.rotation(items, r) for r in range(4)]
    assert orders == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]]
    assert run.rotation([], 2) == []


def test_tuned_settings_come_from_the_role_defaults() -> None:
    tuned = candidates.tuned_torchserve()
    assert tuned.workers >= 1 and tuned.batch_size >= 1
    defaults = {
        "torchserve_default_workers_per_model": 2,
        "torchserve_batch_size": 16,
        "torchserve_max_batch_delay": 3,
        "torchserve_job_queue_size": 500,
        "torchserve_netty_threads": 2,
        "torchserve_netty_client_threads": 2,
        "torchserve_jvm_heap": "256m",
        "torchserve_log_level": "error",
        "torchserve_access_log": False,
    }
    settings = candidates.tuned_torchserve(defaults)
    assert (settings.workers, settings.batch_size, settings.max_batch_delay_ms) == (2, 16, 3)
    assert (settings.log_level, settings.access_log) == ("error", False)
    assert settings.override({"batch_size": "4", "jvm_heap": "1g"}).batch_size == 4
    with pytest.raises(ValueError, match="unknown"):
        settings.override({"batchsize": "4"})
    assert settings.override({"prometheus_metrics": "false"}).prometheus_metrics is False
    for name, text in [
        ("prometheus_metrics", "maybe"),
        ("batch_size", "abc"),
        ("batch_size", "true"),
        ("access_log", "1"),
        ("jvm_heap", "[1]"),
    ]:
        with pytest.raises(ValueError, match=name):
            settings.override({name: text})
    reference = candidates.REFERENCE_TORCHSERVE
    assert reference.override({"job_queue_size": "200"}).job_queue_size == 200
    with pytest.raises(ValueError, match="a number or a word"):
        reference.override({"job_queue_size": "yes"})


def test_reference_settings_are_the_reference_projects() -> None:
    ref = candidates.REFERENCE_TORCHSERVE
    assert (ref.workers, ref.batch_size, ref.job_queue_size) == (1, 1, None)
    numbers = [c.number for c in candidates.candidates(candidates.tuned_torchserve())]
    assert numbers == [1, 2, 3, 4, 5, 6, 7, 8]


NGINX_SITE = candidates.REPO / "roles" / "nginx" / "templates" / "modelserve.conf.j2"


def forwarded_to_production(site: str) -> dict[str, str]:
    """The headers nginx's site sends to production: its server-level proxy_set_header
    directives (the routes' locations, which follow, inherit them); an empty value is none."""
    server_level = site.split("\nserver {", 1)[1].split("\n    location ", 1)[0]
    directives = re.findall(r"^    proxy_set_header (\S+) (.+);$", server_level, re.MULTILINE)
    return {name: value for name, value in directives if value != '""'}


def test_tuned_torchserve_is_sent_what_nginx_forwards_to_production() -> None:
    site = NGINX_SITE.read_text()
    # None of a client's own headers go on: the list below is all TorchServe gets.
    assert "\n    proxy_pass_request_headers off;\n" in site
    forwarded = forwarded_to_production(site)
    sent_by_wrk_itself = {"Host", "Content-Type"}
    tuned = next(c for c in candidates.candidates(candidates.tuned_torchserve()) if c.number == 4)
    added = dict(header.split(": ", 1) for header in tuned.headers)
    assert set(added) == set(forwarded) - sent_by_wrk_itself
    assert added["X-Modelserve-Route"] == "production"  # so the handler counts its inputs


def test_the_proxy_floor_sends_torchserve_what_production_does_and_nothing_more() -> None:
    config = run.proxy_floor_config(candidates.nginx_settings())
    sent = dict(re.findall(r"^ +proxy_set_header (\S+) (.+);$", config, re.MULTILINE))
    forwarded = forwarded_to_production(NGINX_SITE.read_text())
    assert {name for name, value in sent.items() if value != '""'} == set(forwarded)
    assert sent["X-Modelserve-Route"] == '"production"'
    assert "proxy_pass_request_headers off;" in config
    assert f"server unix:{run.INFERENCE_SOCKET} " in config
    # Nothing of the stack's own per-request work: no log, retry, rate limit or rule.
    for directive in ("access_log /", "error_page", "limit_req", "add_header", "if (", "map "):
        assert directive not in config
    floor = next(c for c in candidates.candidates(candidates.tuned_torchserve()) if c.number == 8)
    assert floor.torchserve == candidates.tuned_torchserve() and floor.headers == ()
    assert run.candidate_containers(floor) == [
        "modelserve-benchmark-proxy-floor",
        "modelserve-benchmark-proxy-floor-torchserve",
    ]
    on_socket = run.torchserve_properties(floor.torchserve, f"unix:{run.INFERENCE_SOCKET}")
    assert f"inference_address=unix:{run.INFERENCE_SOCKET}" in on_socket.splitlines()


def test_a_container_gone_mid_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a container on the request path stopped mid-run"):
        run.cpu_usage_us(tmp_path / "gone")


def test_wrk_adds_a_candidates_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []

    def wrk(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        argvs.append(argv)
        return subprocess.CompletedProcess(argv, 0, WRK_OUTPUT, "")

    monkeypatch.setattr(run.subprocess, "run", wrk)
    target = run.Running(4, "torchserve-tuned", "t", "http://127.0.0.1:8080/p", None, {}, "")
    target.headers = ("X-Modelserve-Route: production", "Authorization: Bearer b")
    run.run_wrk(target, 100, 1)
    argv = argvs[0]
    assert argv[-1] == "http://127.0.0.1:8080/p"
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-H"] == list(target.headers)


def test_torchserve_candidates_config() -> None:
    reference = run.torchserve_properties(candidates.REFERENCE_TORCHSERVE)
    assert "default_workers_per_model=1" in reference
    assert "job_queue_size" not in reference and "number_of_netty_threads" not in reference
    tuned = candidates.tuned_torchserve()
    ours = run.torchserve_properties(tuned)
    assert f"job_queue_size={tuned.job_queue_size}" in ours
    assert "decode_input_request=false" in ours
    # The settings the role's config.properties always has (metrics, Netty's native
    # transport), and the reference not.
    role_config = (
        Path(__file__).parents[2] / "roles/torchserve/templates/config.properties.j2"
    ).read_text()
    metrics = [
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        "model_metrics_auto_detect=true",
        "use_native_io=true",
    ]
    assert all(line in role_config.splitlines() for line in metrics)
    assert all(line in ours.splitlines() for line in metrics)
    assert not any(line in reference for line in metrics)
    log4j2 = run.log_config(tuned.override({"log_level": "error", "access_log": "false"}))
    assert '<Root level="error">' in log4j2
    assert '<Logger name="ACCESS_LOG" level="off"/>' in log4j2


class RecordingRouting:
    """Stands in for CanaryRouting's two switches (the real ones need the VM)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def canary(self) -> None:
        self.calls.append("canary")

    def production_only(self) -> None:
        self.calls.append("production only")


def _running(number: int) -> run.Running:
    return run.Running(number, "key", "title", "http://127.0.0.1/", None, {}, "path")


def test_the_canary_weight_is_live_only_while_the_canary_candidate_runs() -> None:
    routing = RecordingRouting()
    for number in (4, 5, 6):
        with run.canary_step(routing, _running(number)):  # type: ignore[arg-type]
            pass
    assert routing.calls == []
    with pytest.raises(RuntimeError), run.canary_step(routing, _running(7)):  # type: ignore[arg-type]
        assert routing.calls == ["canary"]
        raise RuntimeError("wrk failed")
    assert routing.calls == ["canary", "production only"]
