"""What `styles train` computes once, before the transformer loads: the prompt embeddings of every caption
and sample prompt (then the four text encoders leave the device), and each picture's latents at its
aspect-ratio bucket (the VAE stays, small, to decode samples).

Each stage loads only the components it needs from the model folder or hub id, so the text encoders and
the transformer are never on the device together.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline
from PIL import Image, ImageOps

from noisett_mcp.config import Settings
from noisett_mcp.engine.demo import MARKER, write_demo_model
from noisett_mcp.styles.training import TrainingImage, bucket_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt's conditioning, as HiDreamImagePipeline.encode_prompt returns it (batch of one)."""

    t5: torch.Tensor  # (1, tokens, 4096)
    llama: torch.Tensor  # (layers, 1, tokens, 4096)
    pooled: torch.Tensor  # (1, 2048)

    def to(self, device: str | torch.device, dtype: torch.dtype) -> PromptEmbeds:
        return PromptEmbeds(*(t.to(device=device, dtype=dtype) for t in (self.t5, self.llama, self.pooled)))


@dataclass(frozen=True)
class CachedLatents:
    """A picture's latents, normalised as the pipeline de-normalises them before its VAE decode.

    The distribution's mode, as image-to-image encodes a source, not a fresh sample each step as
    diffusers' script draws: HiDream's trained VAE has a posterior std near 0.01, where the two agree,
    but a random VAE (the demo model's) has one near 1, where samples would bury the picture in noise."""

    latents: torch.Tensor  # (1, channels, h, w), on the CPU
    size: tuple[int, int]  # the bucket's width × height in pixels


def model_source(settings: Settings) -> str:
    """The folder or hub id the components load from (the demo model is written once)."""
    return str(write_demo_model(settings.demo_model_dir)) if settings.is_demo else settings.model


def render_side(source: str) -> int | None:
    """The side the demo model renders (from its marker); None for a real model (1024)."""
    marker = Path(source) / MARKER
    return int(json.loads(marker.read_text())["sample_size"]) if marker.is_file() else None


def _load_kwargs(settings: Settings, source: str, dtype: torch.dtype) -> dict[str, object]:
    kwargs: dict[str, object] = {"dtype": dtype, "cache_dir": str(settings.resolved_model_cache_dir)}
    if Path(source).is_dir():
        kwargs["local_files_only"] = True
    return kwargs


@torch.no_grad()
def encode_prompts(
    settings: Settings, source: str, prompts: list[str], device: str, dtype: torch.dtype, nf4: bool
) -> dict[str, PromptEmbeds]:
    """Each distinct prompt's embeddings, on the CPU; the text encoders are freed before this returns."""
    kwargs = _load_kwargs(settings, source, dtype)
    if not (Path(source) / "text_encoder_4").is_dir():  # the HiDream repos ship without Llama (gated)
        kwargs.update(_llama(settings, dtype, nf4))
    pipe = HiDreamImagePipeline.from_pretrained(source, transformer=None, vae=None, **kwargs)
    pipe.to(device)
    embeds = {}
    for prompt in dict.fromkeys(prompts):
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            prompt=prompt, device=torch.device(device), dtype=dtype, do_classifier_free_guidance=False
        )
        embeds[prompt] = PromptEmbeds(t5.cpu(), llama.cpu(), pooled.cpu())
    pipe.to("cpu")  # before deleting: frees the device memory at once (diffusers#11376)
    del pipe
    free_memory()
    return embeds


def _llama(settings: Settings, dtype: torch.dtype, nf4: bool) -> dict[str, object]:
    name = settings.llama_model
    local = Path(name).is_dir()
    extra: dict[str, object] = {}
    if nf4:
        extra["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    cache = str(settings.resolved_model_cache_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name, cache_dir=cache, local_files_only=local)
    encoder = transformers.LlamaForCausalLM.from_pretrained(
        name, output_hidden_states=True, output_attentions=True, dtype=dtype, cache_dir=cache,
        local_files_only=local, **extra,
    )  # fmt: skip
    return {"tokenizer_4": tokenizer, "text_encoder_4": encoder}


def schedule_shift(settings: Settings, source: str, default: float) -> float:
    """The σ shift of the model's own scheduler (`shift`, or UniPC's `flow_shift`)."""
    config = FlowMatchEulerDiscreteScheduler.load_config(
        source, subfolder="scheduler", cache_dir=str(settings.resolved_model_cache_dir)
    )
    return float(config.get("shift") or config.get("flow_shift") or default)


def load_vae(settings: Settings, source: str, device: str, dtype: torch.dtype) -> AutoencoderKL:
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **_load_kwargs(settings, source, dtype))
    return vae.to(device).requires_grad_(False).eval()


def vae_factor(vae: AutoencoderKL) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


@torch.no_grad()
def encode_images(
    vae: AutoencoderKL, images: list[TrainingImage], side: int, multiple: int
) -> list[CachedLatents]:
    """Each picture fitted to its bucket (scaled to cover it, centre-cropped) and encoded once."""

    cached = []
    for image in images:
        size = bucket_for(image.width, image.height, side, multiple)
        with Image.open(image.path) as opened:
            upright = ImageOps.exif_transpose(opened).convert("RGB")
        fitted = ImageOps.fit(upright, size, Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        mode = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        normalised = (mode.float() - vae.config.shift_factor) * vae.config.scaling_factor
        cached.append(CachedLatents(normalised.cpu(), size))
    return cached


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
