"""What the GPU can do, asked of the driver's `nvidia-smi` before torch is imported: the command line
refuses a setting the machine cannot run in milliseconds, not after a model load.

The engine checks the same with torch once it runs (engine/fast.py); this is the early, cheap answer.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass

from noisett_mcp.config import Settings

FP8_CAPABILITY = (8, 9)  # Ada Lovelace; Hopper is 9.0, Blackwell 10.0 and 12.0
FP8_ALTERNATIVES = (
    "use NOISETT_QUANTIZE=none (bf16, 60.5 GiB at peak) or nf4 (28.1 GiB, 1.35× the time: "
    "fits a 40–48 GB card), or a GPU of compute capability 8.9 or newer (L4, L40S, RTX 4090, H100, H200)"
)


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]


def nvidia_gpus() -> list[Gpu]:
    """The GPUs the NVIDIA driver sees, in index order; none without the driver's tool."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listing = subprocess.run(
            [tool, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in listing.splitlines():
        name, _, cap = line.rpartition(",")
        major, _, minor = cap.strip().partition(".")
        if major.isdigit() and minor.isdigit():
            gpus.append(Gpu(name.strip(), (int(major), int(minor))))
    return gpus


def fp8_problem(settings: Settings, gpus: list[Gpu] | None = None) -> str | None:
    """Why NOISETT_QUANTIZE=fp8 cannot run here, in one line; None when it can (or was not asked)."""
    if settings.quantize != "fp8":
        return None
    if settings.device == "cpu":
        return (
            f"NOISETT_QUANTIZE=fp8 needs an NVIDIA GPU with FP8, not NOISETT_DEVICE=cpu: {FP8_ALTERNATIVES}"
        )
    gpus = nvidia_gpus() if gpus is None else gpus
    index = int(settings.device.partition(":")[2] or 0)
    if index >= len(gpus):
        return f"NOISETT_QUANTIZE=fp8 needs an NVIDIA GPU with FP8, and none is here: {FP8_ALTERNATIVES}"
    gpu = gpus[index]
    if gpu.capability < FP8_CAPABILITY:
        return (
            f"NOISETT_QUANTIZE=fp8 needs FP8 (compute capability 8.9 or newer), and the {gpu.name} here is "
            f"{gpu.capability[0]}.{gpu.capability[1]}: {FP8_ALTERNATIVES}"
        )
    if importlib.util.find_spec("torchao") is None:
        return "NOISETT_QUANTIZE=fp8 needs torchao: pip install 'noisett-mcp[fp8]'"
    return None
