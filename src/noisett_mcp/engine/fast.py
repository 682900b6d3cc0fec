"""The fast path of a loaded pipeline: the sync-free MoE (moe.py), FP8 linears (NOISETT_QUANTIZE=fp8) and
compiled transformer blocks (NOISETT_COMPILE), compiled at load by a warm-up, never on a user's image.

Measured on an H200 (DESIGN.md, "Measured on a GPU"): plain diffusers runs one 1024² forward in 192–197 ms,
about 1.9× the chip's bf16 floor; the router's host syncs, unfused elementwise kernels and launch gaps
make the difference. Each block is compiled alone (regional compilation): the 16 double-stream blocks
share one graph and the 32 single-stream blocks another, so compiling costs two graphs per input shape,
not 48. With the router sync-free each block is one graph (`fullgraph=True`).

Shapes: HiDream pads every non-square image to the same token count as a square one (its `max_seq`) and
adds a mask, and its text is always 128 + 128 tokens. So every aspect ratio preset has one of two input
shapes, square or masked, at each batch size: the warm-up renders 1:1 and one other preset at batch 1 and 2
(classifier-free guidance doubles the batch), and no later preset compiles again. The graphs are static
(`dynamic=False`): a batch of several images (NOISETT_BATCH=on) compiles its batch size on first use.

Styles: peft wraps the adapted Linears and dynamo guards on their adapters, so each state of the loaded
adapters (which are loaded, which is active, or none) would be its own graph. The engine opens one
adapter slot before compiling (adapters.py), and styles are copied into it in place: the graphs compiled
at load serve every style that fits the slot. One that does not runs as its own adapter and compiles on
its first image; the recompile limit is raised so that such states do not reach it (with fullgraph,
reaching it fails the image instead of running eagerly).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import HiDreamImagePipeline
from torch import nn

from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.moe import install_fast_moe
from noisett_mcp.errors import ModelUnavailable
from noisett_mcp.hardware import FP8_ALTERNATIVES, FP8_CAPABILITY
from noisett_mcp.schemas import ASPECT_RATIOS, rendered_size

log = logging.getLogger(__name__)

WARM_UP_RATIOS = ("1:1", "16:9")  # square, and one masked shape that stands for every other preset
WARM_UP_GUIDANCE = (0.0, 5.0)  # batch 1, and batch 2 (classifier-free guidance)
# Graphs per code object: both block kinds run HiDreamBlock.forward, so the warm-up alone makes
# 2 kinds × 2 shapes × 2 batch sizes = 8, torch's default limit; each style state adds as many.
RECOMPILE_LIMIT = 256


@dataclass(frozen=True)
class FastPath:
    """What the fast path did at load, for logs, /health and the benchmarks."""

    moe_layers: int = 0
    fp8_layers: int = 0
    compiled_blocks: int = 0
    warm_up_s: float = 0.0


def compile_wanted(config: EngineConfig, device: str) -> bool:
    if config.quantize == "fp8":
        return True  # uncompiled FP8 measured 3× slower than bf16
    return config.compile == "on" or (config.compile == "auto" and device.startswith("cuda"))


def check_fp8(device: str) -> None:
    """The engine's own check, with torch (the command line asked nvidia-smi already)."""
    if not device.startswith("cuda"):
        raise ModelUnavailable(
            f"NOISETT_QUANTIZE=fp8 needs an NVIDIA GPU with FP8, not {device}: {FP8_ALTERNATIVES}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ModelUnavailable(
            f"NOISETT_QUANTIZE=fp8 needs FP8 (compute capability 8.9 or newer), and the {name} here is "
            f"{capability[0]}.{capability[1]}: {FP8_ALTERNATIVES}"
        )


def _fp8_target(module: nn.Module, name: str) -> bool:
    """The blocks' linear layers, but the routed experts, whose stacked bf16 weights feed the grouped
    GEMM (torchao has no float8 grouped GEMM for inference); dims divisible by 16, as float8 GEMMs need."""
    return (
        type(module) is nn.Linear
        and "_blocks." in name
        and ".experts." not in name
        and ".lora_" not in name  # the style slot's factors, copied into in place (adapters.py)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_fp8(transformer: nn.Module) -> int:
    from torchao.quantization import (  # type: ignore[import-not-found]  # the optional fp8 extra
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    count = sum(1 for name, module in transformer.named_modules() if _fp8_target(module, name))
    quantize_(
        transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_fp8_target
    )
    return count


def use_cache_dir(folder: Path | None) -> None:
    """Inductor's and Triton's caches in `folder` (a persistent volume), read when inductor first runs."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))


def transformer_blocks(transformer: Any) -> list[nn.Module]:
    return [*transformer.double_stream_blocks, *transformer.single_stream_blocks]


def compile_blocks(transformer: nn.Module) -> int:
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * RECOMPILE_LIMIT)
    blocks = transformer_blocks(transformer)
    for block in blocks:
        block.compile(fullgraph=True, dynamic=False)
    return len(blocks)


def warm_up(pipe: HiDreamImagePipeline) -> float:
    """Compile every input shape a user's image can meet: one step of each warm-up shape, no VAE."""
    side, multiple = pipe.default_sample_size * pipe.vae_scale_factor, pipe.vae_scale_factor * 2
    started = time.perf_counter()
    for ratio in WARM_UP_RATIOS:
        assert ratio in ASPECT_RATIOS
        width, height = rendered_size(ratio, side, multiple)
        for guidance in WARM_UP_GUIDANCE:
            # Under the pipeline's own no_grad, as a user's image runs: inference-mode tensors would
            # be another dispatch key set, and every graph would compile again on the first image.
            pipe(
                prompt="warm-up",
                width=width,
                height=height,
                num_inference_steps=1,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(0),
                output_type="latent",
            )
    return time.perf_counter() - started


def speed_up(pipe: HiDreamImagePipeline, config: EngineConfig, device: str) -> FastPath:
    """Install the fast path on a loaded, placed pipeline. The MoE is always replaced where it is
    sync-free on the device (it gives the stock result); FP8 and compile follow the settings."""
    if config.offload != "none":
        return FastPath()  # offload moves weights each call: stacks and compiled graphs would not hold
    transformer = pipe.transformer
    moe_layers = install_fast_moe(transformer)
    fp8_layers = 0
    if config.quantize == "fp8":
        check_fp8(device)
        fp8_layers = quantize_fp8(transformer)
    if not compile_wanted(config, device):
        return FastPath(moe_layers=moe_layers, fp8_layers=fp8_layers)
    use_cache_dir(config.compile_cache_dir)
    compiled = compile_blocks(transformer)
    seconds = warm_up(pipe)
    log.info("compiled %d transformer blocks; the warm-up took %.1f s", compiled, seconds)
    return FastPath(moe_layers, fp8_layers, compiled, seconds)
