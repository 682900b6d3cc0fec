"""benchmarks/gpu/fast_path.py stays runnable for the day a GPU machine is lent: its --dry-run runs every part
but fp8 (the forward against its floor with the profiler's figures, the compile cold and from the disk
cache, and Fast, Dev and Full against plain diffusers) on the demo model on the CPU, through the same
code; and run.sh is valid shell that names every script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"


@pytest.mark.slow
def test_the_fast_path_dry_run_measures_every_part_on_the_cpu(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GPU / "fast_path.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads((tmp_path / "fast_path.json").read_text())
    assert figures["errors"] == []
    parts = figures["parts"]
    assert {"forward", "compile", "forward_fast", "fast", "dev", "full"} <= set(parts)
    assert "fp8" in figures["skipped"], "no FP8 on a CPU: skipped with the reason"
    forward = parts["forward"]
    assert forward["tflop"]["batch2"] == pytest.approx(2 * forward["tflop"]["batch1"], rel=0.05)
    assert forward["floor"]["batch1_ms"] > 0
    assert parts["compile"]["moe_layers"] == 2 and parts["compile"]["compiled_blocks"] == 2
    # float32 on a CPU: the fast path's image is plain diffusers' image.
    assert all(parts[v]["max_pixel_difference"] <= 1 for v in ("fast", "dev", "full"))
    assert parts["full"]["guidance"] == 5.0
    assert "== fast path" in result.stdout


def test_run_sh_skips_a_missing_script_and_one_its_budget_leaves_no_time_for(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(GPU / "run.sh"), "540"],
        env={
            "PATH": "/usr/bin:/bin",
            "OUT": str(tmp_path),
            "SCRIPTS": "no_such_script first_light",
            "CAP_first_light": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "== no_such_script: not in this checkout, skipped" in result.stdout
    assert "== first_light: skipped" in result.stdout, "a cap of 0 s leaves first light no time"
    assert "first_light fast_path cold_start train_style" in (GPU / "run.sh").read_text()
