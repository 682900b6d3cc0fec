"""NOISETT_QUANTIZE=fp8 runs only where the GPU has FP8 (compute capability 8.9 or newer). Elsewhere the real
command line refuses it at start, before torch loads, with one line that names the GPU and the
alternatives; the engine checks again with torch."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.hardware import Gpu, fp8_problem
from tests.support import child_env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "noisett_mcp", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _fake_nvidia_smi(folder: Path, listing: str) -> str:
    """A stand-in for the driver's tool, printing what `--query-gpu=name,compute_cap` prints on that GPU."""
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{listing}\\n'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()  # one line, no traceback
    return line


def test_fp8_on_a_machine_without_an_nvidia_gpu_is_refused_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = child_env(settings, NOISETT_QUANTIZE="fp8", PATH=f"{empty}{os.pathsep}{os.environ['PATH']}")
    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], env=env, capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    for command in (["serve"], ["generate", "a fox"]):
        line = _one_line(_cli(env, *command))
        assert line.startswith("error: NOISETT_QUANTIZE=fp8 needs an NVIDIA GPU with FP8"), line
        assert "none is here" in line and "NOISETT_QUANTIZE=none" in line and "nf4" in line


def test_fp8_on_an_a100_is_refused_at_start_naming_the_gpu(settings: Settings, tmp_path: Path) -> None:
    path = _fake_nvidia_smi(tmp_path, "NVIDIA A100-SXM4-80GB, 8.0")
    line = _one_line(_cli(child_env(settings, NOISETT_QUANTIZE="fp8", PATH=path), "serve"))
    assert "the NVIDIA A100-SXM4-80GB here is 8.0" in line and "8.9 or newer" in line, line
    assert "NOISETT_QUANTIZE=none" in line and "nf4" in line and "H100" in line


def test_fp8_with_device_cpu_is_refused_at_start(settings: Settings) -> None:
    line = _one_line(_cli(child_env(settings, NOISETT_QUANTIZE="fp8", NOISETT_DEVICE="cpu"), "generate", "x"))
    assert "not NOISETT_DEVICE=cpu" in line and "nf4" in line, line


@pytest.mark.parametrize(
    ("gpus", "device", "refused"),
    [
        ([Gpu("Tesla T4", (7, 5))], "auto", "the Tesla T4 here is 7.5"),
        (
            [Gpu("NVIDIA H100 80GB HBM3", (9, 0)), Gpu("Tesla T4", (7, 5))],
            "cuda:1",
            "the Tesla T4 here is 7.5",
        ),
        ([Gpu("NVIDIA H100 80GB HBM3", (9, 0))], "cuda:1", "none is here"),
        ([Gpu("NVIDIA L4", (8, 9))], "auto", None),
        ([Gpu("NVIDIA H200", (9, 0))], "cuda:0", None),
    ],
)
def test_fp8_is_allowed_from_compute_capability_8_9_on_the_gpu_the_engine_will_use(
    make_settings: Callable[..., Settings], gpus: list[Gpu], device: str, refused: str | None
) -> None:
    problem = fp8_problem(make_settings(quantize="fp8", device=device), gpus)
    if refused is None:
        # Such a GPU may run it; what is left to say is only about the torchao package.
        assert problem is None or problem.endswith("pip install 'noisett-mcp[fp8]'"), problem
    else:
        assert problem is not None and refused in problem


def test_other_quantize_modes_are_not_checked_for_fp8(make_settings: Callable[..., Settings]) -> None:
    assert fp8_problem(make_settings(quantize="nf4", device="cpu"), []) is None


def test_the_engine_refuses_fp8_on_a_cpu_too() -> None:
    from noisett_mcp.engine.fast import check_fp8
    from noisett_mcp.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="not cpu"):
        check_fp8("cpu")
