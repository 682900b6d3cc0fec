"""Shared helpers for the benchmarks: settings on the demo model, a loopback HTTP server, statistics."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from noisett_mcp.config import Settings
from noisett_mcp.telemetry import configure_logging
from tests.support import free_port, serve_asgi

__all__ = ["QUICK", "demo_settings", "free_port", "median", "p99", "report", "scaled", "serve_asgi", "timed"]

# BENCH_QUICK=1 (`python -m benchmarks.run --quick`): small counts, so that CI runs every benchmark in a
# minute or two and none can rot. Its figures are not measurements: no goal is judged on them.
QUICK = os.environ.get("BENCH_QUICK") == "1"

_CACHE = Path(tempfile.gettempdir()) / "noisett-bench-models"

# Log as `noisett-mcp serve` does (our formatter, INFO), not with the SDK's console default.
configure_logging("INFO")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # the benchmarks' own client: one line per request


def demo_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": "demo",
        "data_dir": Path(tempfile.mkdtemp(prefix="noisett-bench-")),
        "model_cache_dir": _CACHE,
        "preload": False,
    }
    values.update(overrides)
    return Settings(**values)


def scaled(full: int, quick: int) -> int:
    """`full`, or `quick` in quick mode."""
    return quick if QUICK else full


def median(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def report(name: str, rows: list[tuple[str, str]], verdict: str) -> None:
    print(f"\n== {name}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print(f"  -> {verdict}" if not QUICK else "  -> quick mode (BENCH_QUICK=1): small counts, no goal judged")


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu
