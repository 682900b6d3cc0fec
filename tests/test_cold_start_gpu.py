"""benchmarks/gpu/cold_start.py stays runnable for the day a GPU machine is lent: its --dry-run writes the
demo model's transformer as safetensors, loads it through today's path and through the streaming loader,
each in a fresh process, on the CPU, and records the figures each path reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import gpu_dry_run

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "cold_start.py"


@pytest.mark.slow
def test_the_gpu_cold_start_dry_run_loads_through_both_paths_on_the_cpu(tmp_path: Path) -> None:
    gpu_dry_run(SCRIPT, tmp_path)
    figures = json.loads((tmp_path / "cold_start.json").read_text())
    assert figures["device"] == "cpu" and figures["transformer_gib"] > 0
    assert set(figures["paths"]) == {"today", "streaming"} and "nf4" in figures["skipped"]
    for path in figures["paths"].values():
        assert path["load_seconds"] > 0 and path["gib_per_s"] > 0 and path["peak_rss_gib"] > 0
        assert path["cold_cache"] is False, "a dry run must never drop a shared machine's page cache"
