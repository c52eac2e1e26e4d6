"""benchmarks/: reading wrk and docker stats, ratios, targets and the tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import candidates  # noqa: E402
import report  # noqa: E402

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


def full_run() -> report.Results:
    return {
        1: {100: result(8000), 200: result(8000)},
        2: {100: result(1600), 200: result(900, failed=9000)},
        3: {100: result(1000), 200: result(1000)},
        4: {100: result(2500), 200: result(2500)},
        5: {100: result(2200, p99_ms=80), 200: result(2100)},
    }


def test_ratio_uses_successful_requests() -> None:
    results = full_run()
    assert report.ratio(results, 5, 2, 200) == pytest.approx(2100 / 900)
    assert report.ratio(results, 5, 1, 100) == pytest.approx(2200 / 8000)
    assert report.ratio(results, 5, 2, 300) is None
    assert report.ratio({5: {200: result(10)}}, 5, 2, 200) is None


def test_targets_all_met() -> None:
    checks = report.targets(full_run(), memory_peak_bytes=2 * 1024**3)
    assert [t.met for t in checks] == [True] * 6


def test_targets_report_what_is_missed_or_not_measured() -> None:
    results = full_run()
    results[5] = {100: result(900, p99_ms=150), 200: result(800, failed=3)}
    checks = {t.name: t for t in report.targets(results, memory_peak_bytes=None)}
    assert checks["(5) failed requests at 200 connections"].met is False
    assert checks["(5)/(2) successful req/s at 200 connections"].met is False
    assert checks["(5)/(3) successful req/s at 200 connections"].met is False
    assert checks["(5) p99 at 100 connections, ms"].met is False
    assert checks["stack memory, idle or under load, GiB"].met is None
    del results[5]
    assert all(t.met is None for t in report.targets(results, None))


def test_tables() -> None:
    results = full_run()
    titles = {n: f"candidate {n}" for n in results}
    table = report.results_table(titles, results)
    assert table.count("\n") == 2 + 2 * 5 - 1
    assert "| 2 | candidate 2 | 200 | 1,800 | 900 | 9,000 |" in table
    ratios = report.ratios_table(results)
    assert "| (5)/(2) | 1.38 | 2.33 |" in ratios
    targets = report.targets_table(report.targets(results, None))
    assert "not measured" in targets and "**no**" not in targets
    memory = report.memory_table({"idle": {"a": 1024**2}, "under load": {"a": 3 * 1024**2}})
    assert "| a | 1 | 3 |" in memory and "| sum | **1** | **3** |" in memory


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    report.write_chart(path, {n: f"c{n}" for n in range(1, 6)}, full_run())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_reference_settings_are_the_reference_projects() -> None:
    ref = candidates.REFERENCE_TORCHSERVE
    assert (ref.workers, ref.batch_size, ref.job_queue_size) == (1, 1, None)
    numbers = [c.number for c in candidates.candidates(candidates.tuned_torchserve())]
    assert numbers == [1, 2, 3, 4, 5]


def test_torchserve_candidates_config() -> None:
    sys.path.insert(0, str(BENCH_DIR.parent / "tools"))
    import run

    reference = run.torchserve_properties(candidates.REFERENCE_TORCHSERVE)
    assert "default_workers_per_model=1" in reference
    assert "job_queue_size" not in reference and "number_of_netty_threads" not in reference
    tuned = candidates.tuned_torchserve()
    ours = run.torchserve_properties(tuned)
    assert f"job_queue_size={tuned.job_queue_size}" in ours
    assert "decode_input_request=false" in ours
    log4j2 = run.log_config(tuned.override({"log_level": "error", "access_log": "false"}))
    assert '<Root level="error">' in log4j2
    assert '<Logger name="ACCESS_LOG" level="off"/>' in log4j2
