"""Checks made at start, before any work: without torch, without the hub, in well under a second. A model
that is not there, or a quantization this machine cannot run, would otherwise end in a traceback or in a
minute of hub retries once the model loads. Each problem is one line that names the setting and the remedy.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import re
from pathlib import Path

from noisett_mcp.config import BLOB_MODEL_SCHEME, DEMO_MODEL, Settings
from noisett_mcp.hardware import fp8_problem

# A Hugging Face repo id: NAME or ORG/NAME, letters, digits, `_`, `-` and `.` (no `--` or `..`), 96 each.
_HUB_ID = re.compile(r"(?!.*(--|\.\.))[\w.-]{1,96}(/[\w.-]{1,96})?")
_OR_ELSE = "a hub id such as HiDream-ai/HiDream-I1-Fast, or demo (the tiny offline model)"
_EXAMPLE = f"a folder that holds a diffusers pipeline (its model_index.json), {_OR_ELSE}"


def has_nvidia_driver() -> bool:
    """Cheap, before torch: the NVIDIA driver library is there (torch may still see no GPU)."""
    return ctypes.util.find_library("cuda") is not None


def model_problem(model: str, setting: str) -> str | None:
    """Why `model` (given as `setting`: --model or NOISETT_MODEL) cannot be loaded, found on disk alone."""
    if model == DEMO_MODEL or model.startswith(BLOB_MODEL_SCHEME):
        return None
    given = f"{setting} {model}" if setting.startswith("--") else f"{setting}={model}"
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            return (
                f"{given}: the folder {folder.resolve()} has no model_index.json, so it holds no "
                "diffusers pipeline: give the folder that save_pretrained wrote (model_index.json beside "
                f"transformer/, vae/ and the rest), {_OR_ELSE}"
            )
        return None
    if _looks_like_a_path(model):
        return f"{given}: no such folder ({folder.resolve()}): give {_EXAMPLE}"
    if not _HUB_ID.fullmatch(model):
        return f"{given}: neither a folder here nor a Hugging Face model id: give {_EXAMPLE}"
    return None


def quantize_problem(quantize: str, device: str, *, has_gpu: bool, has_bitsandbytes: bool) -> str | None:
    """Why NOISETT_QUANTIZE cannot work here: bitsandbytes quantizes on a CUDA GPU only."""
    if quantize in ("none", "fp8"):  # fp8 is torchao's: hardware.fp8_problem checks it
        return None
    install = "pip install 'noisett-mcp[quantization]' (the `quantization` extra)"
    if device == "cpu" or not has_gpu:
        why = "NOISETT_DEVICE=cpu" if device == "cpu" else "this machine has no NVIDIA driver (libcuda)"
        also = "" if has_bitsandbytes else f"; on a GPU machine it also needs bitsandbytes: {install}"
        return (
            f"NOISETT_QUANTIZE={quantize} quantizes with bitsandbytes on a CUDA GPU, and {why}: set "
            f"NOISETT_QUANTIZE=none here{also}"
        )
    if not has_bitsandbytes:
        return (
            f"NOISETT_QUANTIZE={quantize} needs bitsandbytes, which is not installed: {install}, or set "
            "NOISETT_QUANTIZE=none"
        )
    return None


def render_problems(settings: Settings, *, model_flag: bool) -> list[str]:
    """What stops this process from loading and running its model, one line each."""
    found = [
        model_problem(settings.model, "--model" if model_flag else "NOISETT_MODEL"),
        quantize_problem(
            settings.quantize,
            settings.device,
            has_gpu=has_nvidia_driver(),
            has_bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        ),
        fp8_problem(settings),
    ]
    return [problem for problem in found if problem]


def _looks_like_a_path(model: str) -> bool:
    """A name written as a path (`./x`, `/x`, `~/x`, `a/b/c`, `C:\\x`), never a hub id."""
    written_as_path = model.startswith((".", "~", "/")) or "\\" in model or model.count("/") > 1
    return written_as_path or Path(model).is_absolute()
