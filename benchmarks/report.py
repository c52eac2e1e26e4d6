"""Reading wrk and docker stats, and writing the benchmark's table, ratios and chart.

Pure functions only (no processes, no network), so that the unit tests cover them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
# Ratios that matter, all of (5): our stack against each other candidate.
STACK = 5
RATIO_PAIRS = ((5, 2), (5, 3), (5, 4), (5, 1))
MEMORY_TARGET_BYTES = int(2.5 * 1024**3)
_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. ``failed`` counts non-2xx/3xx answers and every socket error."""

    requests: int
    duration_s: float
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def successful_rps(self) -> float:
        ok = max(self.requests - self.failed, 0)
        return ok / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rps": self.rps, "successful_rps": self.successful_rps}


def parse_wrk(output: str) -> LoadResult:
    """The result line post.lua's ``done()`` prints, as a LoadResult."""
    for line in output.splitlines():
        if line.startswith(RESULT_MARKER):
            data = json.loads(line[len(RESULT_MARKER) :])
            break
    else:
        raise ValueError("no result line in wrk's output (was it run with post.lua?)")
    failed = sum(
        int(data[f"errors_{kind}"]) for kind in ("status", "connect", "read", "write", "timeout")
    )
    return LoadResult(
        requests=int(data["requests"]),
        duration_s=int(data["duration_us"]) / 1e6,
        failed=failed,
        p50_ms=int(data["p50_us"]) / 1000,
        p90_ms=int(data["p90_us"]) / 1000,
        p99_ms=int(data["p99_us"]) / 1000,
        max_ms=int(data["max_us"]) / 1000,
    )


def parse_size(text: str) -> int:
    """Bytes of a docker size such as ``123.4MiB``, ``1.2GiB``, ``512kB`` or ``0B``."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_docker_stats(output: str) -> dict[str, int]:
    """``docker stats --no-stream --format '{{.Name}}\\t{{.MemUsage}}'`` as name -> bytes."""
    usage: dict[str, int] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        name, mem = line.split("\t", 1)
        usage[name.strip()] = parse_size(mem.split("/", 1)[0])
    return usage


def parse_rss_kib(output: str) -> int:
    """Sum of the RSS column (KiB) of ``docker top NAME -o pid,rss``."""
    lines = output.splitlines()
    if not lines or "RSS" not in lines[0].split():
        return 0
    column = lines[0].split().index("RSS")
    return sum(int(line.split()[column]) for line in lines[1:] if line.strip())


Results = dict[int, dict[int, LoadResult]]  # candidate number -> connections -> result


def ratio(results: Results, numerator: int, denominator: int, connections: int) -> float | None:
    """Successful req/s of one candidate over another's at the same connections."""
    try:
        top = results[numerator][connections].successful_rps
        bottom = results[denominator][connections].successful_rps
    except KeyError:
        return None
    return top / bottom if bottom else None


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    wanted: str
    met: bool | None  # None: not measured in this run


def targets(results: Results, memory_peak_bytes: int | None) -> list[Target]:
    """The issue's targets, as this run measured them."""

    def at_least(name: str, value: float | None, floor: float) -> Target:
        return Target(name, value, f">= {floor:g}", None if value is None else value >= floor)

    stack = results.get(STACK, {})
    failed_200 = stack[200].failed if 200 in stack else None
    p99_100 = stack[100].p99_ms if 100 in stack else None
    memory_gib = None if memory_peak_bytes is None else memory_peak_bytes / 1024**3
    return [
        Target(
            "(5) failed requests at 200 connections",
            failed_200,
            "= 0",
            None if failed_200 is None else failed_200 == 0,
        ),
        at_least("(5)/(2) successful req/s at 200 connections", ratio(results, 5, 2, 200), 2),
        at_least("(5)/(3) successful req/s at 200 connections", ratio(results, 5, 3, 200), 1),
        at_least("(5)/(4) successful req/s at 200 connections", ratio(results, 5, 4, 200), 0.8),
        Target(
            "(5) p99 at 100 connections, ms",
            p99_100,
            "<= 100",
            None if p99_100 is None else p99_100 <= 100,
        ),
        Target(
            "stack memory, idle or under load, GiB",
            memory_gib,
            "<= 2.5",
            None if memory_peak_bytes is None else memory_peak_bytes <= MEMORY_TARGET_BYTES,
        ),
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def results_table(titles: dict[int, str], results: Results) -> str:
    """The Markdown table: one row per candidate and connection count."""
    lines = [
        "| # | candidate | conns | req/s | successful req/s | failed | p50 ms | p90 ms | p99 ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number in sorted(results):
        for connections, r in sorted(results[number].items()):
            lines.append(
                f"| {number} | {titles[number]} | {connections} | {r.rps:,.0f} | "
                f"{r.successful_rps:,.0f} | {r.failed:,} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
                f"{r.p99_ms:.1f} |"
            )
    return "\n".join(lines)


def ratios_table(results: Results) -> str:
    connections = sorted({c for runs in results.values() for c in runs})
    header = " | ".join(f"{c} conns" for c in connections)
    lines = [f"| ratio (successful req/s) | {header} |", "| --- |" + " ---: |" * len(connections)]
    for top, bottom in RATIO_PAIRS:
        cells = " | ".join(_fmt(ratio(results, top, bottom, c)) for c in connections)
        lines.append(f"| ({top})/({bottom}) | {cells} |")
    return "\n".join(lines)


def targets_table(checks: list[Target]) -> str:
    lines = ["| target | measured | wanted | met |", "| --- | ---: | --- | --- |"]
    for t in checks:
        met = "not measured" if t.met is None else ("yes" if t.met else "**no**")
        value = _fmt(t.value, 0) if isinstance(t.value, int) else _fmt(t.value)
        lines.append(f"| {t.name} | {value} | {t.wanted} | {met} |")
    return "\n".join(lines)


def memory_table(memory: dict[str, dict[str, int]]) -> str:
    """Per-container memory of the stack, idle and under load, and the sums."""
    phases = list(memory)
    names = sorted({n for usage in memory.values() for n in usage})
    lines = [
        "| container | " + " | ".join(f"{p} MiB" for p in phases) + " |",
        "| --- |" + " ---: |" * len(phases),
    ]
    for name in names:
        cells = " | ".join(_fmt(memory[p].get(name, 0) / 1024**2, 0) for p in phases)
        lines.append(f"| {name} | {cells} |")
    sums = " | ".join(f"**{_fmt(sum(memory[p].values()) / 1024**2, 0)}**" for p in phases)
    lines.append(f"| sum | {sums} |")
    return "\n".join(lines)


def write_chart(path: Path, titles: dict[int, str], results: Results) -> None:
    """Successful req/s and p99 per candidate, one bar per connection count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = sorted(results)
    connections = sorted({c for runs in results.values() for c in runs})
    labels = [f"({n}) {titles[n]}" for n in numbers]
    width = 0.8 / max(len(connections), 1)
    fig, (rps_ax, p99_ax) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, conns in enumerate(connections):
        xs = [n + (i - (len(connections) - 1) / 2) * width for n in range(len(numbers))]
        rps = [results[n][conns].successful_rps if conns in results[n] else 0 for n in numbers]
        p99 = [results[n][conns].p99_ms if conns in results[n] else 0 for n in numbers]
        rps_ax.bar(xs, rps, width, label=f"{conns} connections")
        p99_ax.bar(xs, p99, width, label=f"{conns} connections")
    for ax, title in ((rps_ax, "successful req/s (higher is better)"), (p99_ax, "p99 ms")):
        ax.set_title(title)
        ax.set_xticks(range(len(numbers)), labels, rotation=25, ha="right", fontsize=8)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
