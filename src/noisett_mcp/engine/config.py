"""What the engine reads, and nothing more: a small frozen config built from `Settings`.

Torch-free, like `engine/__init__.py`: the runner builds it on the event loop before the engine thread
imports torch. New engine options (the cold start, the GPU fast path) become fields here, filled in by
`from_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from noisett_mcp.config import DEMO_MODEL, Offload, Quantize, Settings
from noisett_mcp.weights.files import WeightsSource


@dataclass(frozen=True)
class EngineConfig:
    model: str  # a hub id, a local folder holding the pipeline, or `demo`
    llama_model: str  # the gated text encoder HiDream's repos ship without
    device: str  # `auto`, `cuda`, `cuda:N` or `cpu`
    offload: Offload
    quantize: Quantize
    batch: Literal["auto", "on", "off"]
    max_loaded_styles: int
    model_cache_dir: Path
    demo_model_dir: Path
    weights: WeightsSource  # where the weights come from: a folder, or Blob with its account and cache
    variant: str  # NOISETT_VARIANT, checked against a prepared model's manifest
    compile: Literal["auto", "on", "off"] = "off"  # the GPU fast path (engine/fast.py)
    compile_cache_dir: Path | None = None

    @property
    def is_demo(self) -> bool:
        return self.model == DEMO_MODEL

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            model=settings.model,
            llama_model=settings.llama_model,
            device=settings.device,
            offload=settings.offload,
            quantize=settings.quantize,
            batch=settings.batch,
            max_loaded_styles=settings.max_loaded_styles,
            model_cache_dir=settings.resolved_model_cache_dir,
            demo_model_dir=settings.demo_model_dir,
            weights=WeightsSource.from_settings(settings),
            variant=settings.variant,
            compile=settings.compile,
            compile_cache_dir=settings.compile_cache_dir,
        )
