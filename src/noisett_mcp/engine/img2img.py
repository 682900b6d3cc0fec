"""Image-to-image for HiDream: SDEdit on the flow-matching schedule.

diffusers has no HiDream image-to-image pipeline, but `HiDreamImagePipeline` takes `latents` and
`sigmas`, which is enough: encode the source with the VAE, normalise it as the pipeline does, blend it
with the seeded noise at the sigma where the run starts (x_t = (1 - σ)·x0 + σ·noise, the flow-matching
forward process) and denoise along the rest of the schedule.

The schedulers (diffusers 0.42):
- Dev and Fast ship `FlowMatchLCMScheduler`; the demo model `FlowMatchEulerDiscreteScheduler`. Both take
  custom `sigmas` through `retrieve_timesteps` and shift them element by element (a fixed `shift`, or
  `time_shift(mu)` with dynamic shifting), so the unshifted tail of the schedule's own linspace comes
  out as exactly the tail of the shifted schedule. `start` checks that it does.
- Full ships `UniPCMultistepScheduler`, for which the pipeline calls `set_timesteps(num_inference_steps)`
  and drops `sigmas`: it cannot start mid-schedule, and is refused.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import HiDreamImagePipeline, UniPCMultistepScheduler
from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from noisett_mcp.errors import ImageToImageUnsupported


def check_scheduler(pipe: HiDreamImagePipeline) -> None:
    """Refuse a scheduler that cannot start part-way through its schedule."""
    scheduler = pipe.scheduler
    takes_sigmas = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
    if isinstance(scheduler, UniPCMultistepScheduler) or not takes_sigmas:
        raise ImageToImageUnsupported(
            f"this model's scheduler ({type(scheduler).__name__}) cannot start part-way through its "
            "schedule, so it cannot start from a source image (HiDream-I1-Dev and -Fast can): "
            "leave the source out"
        )


@torch.no_grad()
def encode(pipe: HiDreamImagePipeline, image: Image.Image) -> torch.Tensor:
    """The source's latents, normalised as the pipeline de-normalises before its VAE decode. The
    distribution's mode, not a sample: no random draw, so the seed's noise is the text-to-image one."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image).to(device=pipe._execution_device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


@torch.no_grad()
def decode(pipe: HiDreamImagePipeline, latents: torch.Tensor) -> Image.Image:
    """Latents back to an image, exactly as the pipeline's last step does."""
    vae = pipe.vae
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


def start(
    pipe: HiDreamImagePipeline,
    source: torch.Tensor,
    generator: torch.Generator | list[torch.Generator],
    steps: int,
    run: int,
    dtype: torch.dtype,
) -> dict[str, object]:
    """The pipeline arguments that run the last `run` of `steps` steps from the noised source (one
    latent per generator, as text-to-image draws them):
    `latents` and the unshifted `sigmas` whose shift gives the tail of the full schedule."""
    scheduler = pipe.scheduler
    mu = calculate_shift(pipe.transformer.max_seq)  # as the pipeline passes it (dynamic shifting)
    scheduler.set_timesteps(steps, device="cpu", mu=mu)
    full = scheduler.sigmas.clone()
    # set_timesteps' own unshifted schedule: a linspace of timesteps from sigma_max to sigma_min.
    train = scheduler.config.num_train_timesteps
    unshifted = np.linspace(float(scheduler.sigma_max) * train, float(scheduler.sigma_min) * train, steps)
    tail = (unshifted / train)[steps - run :].tolist()
    scheduler.set_timesteps(sigmas=tail, device="cpu", mu=mu)
    if not torch.allclose(scheduler.sigmas, full[steps - run :], atol=1e-5):
        # e.g. Karras or beta sigmas, which respace whatever they are given: not the same schedule
        raise ImageToImageUnsupported(
            f"this model's scheduler ({type(scheduler).__name__}, as configured) does not keep a schedule "
            "that starts part-way through, so it cannot start from a source image: leave the source out"
        )
    sigma = float(full[steps - run])
    # The noise text-to-image draws for these seeds: the same shape, generators, device and dtype.
    batch = len(generator) if isinstance(generator, list) else 1
    shape = (batch, *source.shape[1:])
    noise = randn_tensor(shape, generator=generator, device=source.device, dtype=dtype)
    latents = (1 - sigma) * source.float().expand(shape) + sigma * noise.float()
    return {"latents": latents.to(dtype), "sigmas": tail}
