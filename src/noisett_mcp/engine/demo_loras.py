"""Tiny random LoRA adapters for the demo model, made offline with peft: the built-in demo styles
(`loras/make_demo_styles.py`) and the tests' styles. They have no look of their own, but they change
the output the way a real style does, through the same files and loading code."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from noisett_mcp.config import demo_model_folder
from noisett_mcp.engine.demo import LORA_TARGETS, write_demo_model

_SCRATCH = "noisett_scratch"


def demo_transformer(model_cache: Path) -> HiDreamImageTransformer2DModel:
    """A fresh copy of the demo model's transformer (the cached demo pipeline is written if needed)."""
    folder = write_demo_model(demo_model_folder(model_cache))
    return HiDreamImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")


def write_random_lora(
    transformer: HiDreamImageTransformer2DModel,
    path: Path,
    seed: int,
    rank: int = 4,
    std: float = 0.25,
    targets: list[str] = LORA_TARGETS,
) -> Path:
    """Write a random LoRA for `transformer`'s attention projections to `path`, in diffusers' safetensors
    format with peft's config in the metadata. `std` sets how far it moves the output."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
    transformer.add_adapter(config, adapter_name=_SCRATCH)
    try:
        # Both matrices random (peft starts B at zero), drawn in name order: the same tensors every run.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in sorted(transformer.named_parameters()):
                if f".{_SCRATCH}." in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        state = get_peft_model_state_dict(transformer, adapter_name=_SCRATCH)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Only the fields set here: diffusers passes the metadata to LoraConfig(**metadata), and a full
        # to_dict() names fields that older peft releases reject (kasa_config, velora_config, ...).
        metadata = {"r": rank, "lora_alpha": rank, "target_modules": sorted(targets)}
        HiDreamImagePipeline.save_lora_weights(
            path.parent,
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=metadata,
            weight_name=path.name,
        )
    finally:
        transformer.delete_adapters(_SCRATCH)
    return path
