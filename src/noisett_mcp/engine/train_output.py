"""What a training run shows and leaves: sample images at intervals (fixed prompts and seeds, the first
from the untrained base) gathered into a contact sheet, and the finished style, staged and checked the
way the server will use it: read by the real StyleCatalog, loaded by the real StyleAdapters, and
required to change the output before it may enter the catalog.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, HiDreamImagePipeline, HiDreamImageTransformer2DModel
from peft.utils import get_peft_model_state_dict
from PIL import Image, ImageDraw

from noisett_mcp.config import Settings
from noisett_mcp.engine.adapters import StyleAdapters
from noisett_mcp.engine.demo import LORA_TARGETS
from noisett_mcp.engine.pipeline import _bind_step_noise
from noisett_mcp.engine.train_data import PromptEmbeds
from noisett_mcp.schemas import VARIANT_DEFAULTS
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import StyleManifest
from noisett_mcp.styles.training import TrainingConfig, TrainingFailed, manifest_toml

# Fixed subjects, none of them in a typical brand folder: the style must carry over to them.
SAMPLE_SUBJECTS = ("a lighthouse on a cliff at dusk", "a bowl of fruit on a wooden table")
MIN_CHANGE = 0.5  # mean |style − base| per pixel channel, in 0–255, below which a style changes nothing
THUMB = 256
_SAMPLE = re.compile(r"^step-(\d{6})-(\d+)\.png$")


class Sampler:
    """Renders the sample prompts with the transformer being trained (whatever adapter it has active)."""

    def __init__(
        self,
        settings: Settings,
        source: str,
        vae: AutoencoderKL,
        transformer: HiDreamImageTransformer2DModel,
        embeds: dict[str, PromptEmbeds],
        config: TrainingConfig,
        side: int,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        none = dict.fromkeys(
            [f"{kind}{suffix}" for kind in ("text_encoder", "tokenizer") for suffix in ("", "_2", "_3", "_4")]
        )
        self.pipe = HiDreamImagePipeline.from_pretrained(
            source,
            transformer=transformer,
            vae=vae,
            **none,
            cache_dir=str(settings.resolved_model_cache_dir),
            local_files_only=Path(source).is_dir(),
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.default_sample_size = side // self.pipe.vae_scale_factor  # it renders about side²
        self.embeds = embeds
        self.config = config
        self.side = side
        self.device = device
        self.dtype = dtype
        self.steps, self.guidance = VARIANT_DEFAULTS[config.variant]
        self.folder = config.work_dir / "samples"
        self.contact_sheet = config.work_dir / "contact-sheet.png"

    @staticmethod
    def prompts(trigger: str) -> list[str]:
        return [f"{subject}, {trigger}" for subject in SAMPLE_SUBJECTS]

    def render(self, prompt: str, seed: int) -> Image.Image:
        transformer = self.pipe.transformer
        was_training = transformer.training
        transformer.eval()  # the inference path (and no dropout) for samples
        embeds = self.embeds[prompt].to(self.device, self.dtype)
        negative: dict[str, torch.Tensor] = {}
        if self.guidance > 0:
            empty = self.embeds[""].to(self.device, self.dtype)
            negative = {
                "negative_prompt_embeds_t5": empty.t5,
                "negative_prompt_embeds_llama3": empty.llama,
                "negative_pooled_prompt_embeds": empty.pooled,
            }
        generator = torch.Generator("cpu").manual_seed(seed)
        _bind_step_noise(self.pipe.scheduler, generator)
        try:
            image = self.pipe(
                prompt_embeds_t5=embeds.t5,
                prompt_embeds_llama3=embeds.llama,
                pooled_prompt_embeds=embeds.pooled,
                **negative,
                width=self.side,
                height=self.side,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generator,
                output_type="pil",
            ).images[0]
        finally:
            transformer.train(was_training)
        return image

    def sample(self, step: int) -> None:
        """Render each sample prompt at `step` and redraw the contact sheet."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, prompt in enumerate(self.prompts(self.config.trigger)):
            self.render(prompt, self.config.seed + index).save(self.folder / f"step-{step:06d}-{index}.png")
        self.draw_contact_sheet()

    def draw_contact_sheet(self) -> None:
        """One row per sampled step (the base first), one column per prompt, the step written beside."""
        rows: dict[int, dict[int, Path]] = {}
        for path in self.folder.iterdir():
            match = _SAMPLE.match(path.name)
            if match:
                rows.setdefault(int(match[1]), {})[int(match[2])] = path
        columns = len(SAMPLE_SUBJECTS)
        thumb = min(THUMB, self.side)
        label = 96
        sheet = Image.new("RGB", (label + columns * thumb, len(rows) * thumb), "white")
        draw = ImageDraw.Draw(sheet)
        for row, step in enumerate(sorted(rows)):
            draw.text((6, row * thumb + 6), "base" if step == 0 else f"step {step}", fill="black")
            for column, path in rows[step].items():
                with Image.open(path) as image:
                    sheet.paste(image.resize((thumb, thumb)), (label + column * thumb, row * thumb))
        sheet.save(self.contact_sheet)


def adapter_state(transformer: HiDreamImageTransformer2DModel, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the key names diffusers' save_lora_weights expects."""
    state = get_peft_model_state_dict(transformer, adapter_name=adapter)
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}


def publishable(
    settings: Settings, sampler: Sampler, manifest: StyleManifest, staged: Path, adapter: str
) -> float:
    """Stage the trained adapter as a style in `staged` and check it as the server would use it; return
    how much it changes the check image (the preview), or raise TrainingFailed."""
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    name = manifest.name
    transformer = sampler.pipe.transformer
    assert manifest.training is not None
    rank = manifest.training.rank
    HiDreamImagePipeline.save_lora_weights(
        staged,
        # In the engine's dtype (bf16 on a GPU: half the file of peft's fp32 training copy).
        transformer_lora_layers={
            key: tensor.to(sampler.dtype) for key, tensor in adapter_state(transformer, adapter).items()
        },
        # The fields peft needs, no more: diffusers passes them to LoraConfig(**metadata).
        transformer_lora_adapter_metadata={
            "r": rank,
            "lora_alpha": rank,
            "target_modules": sorted(LORA_TARGETS),
        },
        weight_name=f"{name}.safetensors",
    )
    (staged / f"{name}.toml").write_text(manifest_toml(manifest), encoding="utf-8")
    transformer.delete_adapters(adapter)  # from here on, the style runs as the server runs it
    view = StyleCatalog(settings, staged).refresh()
    style = view.styles.get(name)
    if style is None:
        reasons = [r.reason for r in view.refused] + [f"made for {s.base_models}" for s in view.skipped]
        raise TrainingFailed(f"the trained style is not offered by the catalog: {'; '.join(reasons)}")
    prompt = sampler.prompts(sampler.config.trigger)[0]
    adapters = StyleAdapters(sampler.pipe, max_loaded=1)
    adapters.activate(None, 0)
    base = sampler.render(prompt, sampler.config.seed)
    adapters.activate(style, style.manifest.strength)
    styled = sampler.render(prompt, sampler.config.seed)
    change = float(np.abs(np.asarray(styled, np.float32) - np.asarray(base, np.float32)).mean())
    if change < MIN_CHANGE:
        raise TrainingFailed(
            f"the trained style changes the output by {change:.2f}/255 on average, under the {MIN_CHANGE} "
            "a style must: it learnt nothing usable. Train more --steps or a higher --learning-rate"
        )
    styled.save(staged / f"{name}.png")
    return change
