"""benchmarks/gpu/train_style.py stays runnable for the day a GPU machine is lent: its --dry-run runs the
text stage and `styles train`'s own training step on a tiny random-weight pipeline on the CPU, through the
same code (NF4 is GPU only and is reported as skipped)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "train_style.py"


def test_the_gpu_training_benchmark_dry_run_times_the_real_step_on_the_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("train_style_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(["--dry-run", "--out", str(tmp_path), "--steps", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    figures = json.loads((tmp_path / "train_style.json").read_text())
    assert figures["errors"] == {} and figures["rank"] == 32 and figures["dtype"] == "float32"
    step = figures["sections"]["bf16"]
    assert step["s_per_step_median"] > 0 and step["losses_finite"] and step["lora_params_m"] > 0
    assert step["minutes_per_1000_steps"] == pytest.approx(step["s_per_step_median"] * 1000 / 60, abs=0.1)
    assert figures["sections"]["nf4"] == {"skipped": "GPU only (bitsandbytes NF4 training)"}
    assert "min per 1,000 steps" in capsys.readouterr().out
