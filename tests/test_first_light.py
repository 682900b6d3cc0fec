"""benchmarks/gpu/first_light.py stays runnable for the day a GPU machine is lent: its --dry-run runs every
section (build, calibration, the three variants, styles, count=4, and quantization where bitsandbytes is
installed) on a tiny random-weight pipeline on the CPU, through the same code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import gpu_dry_run

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "first_light.py"


@pytest.mark.slow
def test_the_gpu_first_light_dry_run_measures_every_section_on_the_cpu(tmp_path: Path) -> None:
    result = gpu_dry_run(SCRIPT, tmp_path)
    figures = json.loads((tmp_path / "first_light.json").read_text())
    assert figures["errors"] == []
    sections = figures["sections"]
    assert {"build", "calibrate", "fast", "dev", "full", "lora", "batch"} <= set(sections)
    assert set(sections) | set(figures["skipped"]) >= {"nf4", "int8"}
    assert sections["full"]["guidance"] == 5.0 and sections["fast"]["engine"]["runs"] >= 1
    assert sections["lora"]["adapter_changes_output"], "the style's adapter must really change the image"
    # float32 on a CPU: one image of a batch is the image its seed gives alone.
    assert sections["batch"]["max_pixel_difference_batched_vs_alone"] <= 1
    assert "== GPU first light" in result.stdout and "count=4" in result.stdout
