"""`noisett-mcp styles train`: a LoRA on HiDream's transformer, learnt from a folder of pictures.

The recipe is diffusers' (examples/dreambooth/train_dreambooth_lora_hidream.py), in our own words:
- flow matching: x_t = (1 − σ)·x0 + σ·ε, and the transformer learns the velocity ε − x0. HiDream's
  transformer outputs its negative (the pipeline flips the sign before the scheduler step), so we do too;
- σ from a logit-normal draw, shifted towards noise by the shift of the model's own scheduler (3 where
  it names none, as diffusers' script uses), SD3's recipe;
- the text embeddings of every caption are computed once, the text encoders freed before the transformer
  loads, and each picture's latents are cached once (see train_data.CachedLatents for why the mode);
- a peft LoRA on the attention projections (`to_q`, `to_k`, `to_v`, `to_out`), the targets and key format
  the catalog and engine/adapters.py load; gradient checkpointing; bf16 on a GPU, fp32 on a CPU; an NF4
  base (QLoRA) on a GPU.

One difference on purpose: diffusers' script loads the transformer with `force_inference_output`, which
runs the routed experts of each MoE layer under `no_grad`, so the loss reaches earlier layers only through
the shared experts and the residual. We train in the model's training mode, whose MoE path carries the
gradient through every expert, and compare its output in the patch layout that mode returns.

All randomness of step k (which picture, σ, the noise) comes from (seed, k): a run
resumed from a checkpoint takes exactly the steps the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import BitsAndBytesConfig, HiDreamImageTransformer2DModel
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from noisett_mcp.config import Settings
from noisett_mcp.engine import train_data
from noisett_mcp.engine.demo import LORA_TARGETS
from noisett_mcp.engine.pipeline import _device, engine_dtype
from noisett_mcp.engine.train_output import Sampler, adapter_state, publishable
from noisett_mcp.styles.manifest import StyleManifest
from noisett_mcp.styles.training import TrainingConfig, TrainingFailed, TrainingRefused, memory_problem

log = logging.getLogger(__name__)

ADAPTER = "noisett_train"
DEFAULT_SHIFT = 3.0
CHECKPOINT = "checkpoint"


class TrainingStopped(Exception):
    """Ctrl-C: the run saved a checkpoint at `step` that --resume continues."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped at step {step}; checkpoint saved in {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    staged: Path  # the style's folder: NAME.safetensors, NAME.toml, NAME.png
    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step, from step 1 (resumed ones too)
    change: float = 0.0  # mean |style − base| over the check image's pixels, in 0–255
    contact_sheet: Path | None = None


OnStep = Callable[[int, float], None]


def train_style(
    settings: Settings,
    config: TrainingConfig,
    manifest: StyleManifest,
    on_start: Callable[[int, int], None] = lambda start, total: None,
    on_step: OnStep = lambda step, loss: None,
    note: Callable[[str], None] = log.info,
) -> TrainResult:
    """Train, check and stage the style; raise TrainingRefused before loading anything for input that
    cannot work, TrainingStopped after Ctrl-C (a checkpoint saved), TrainingFailed when the result fails
    its check."""
    device = _device(settings.device)
    dtype = engine_dtype(device)
    if config.quantize == "nf4" and not device.startswith("cuda"):
        raise TrainingRefused(
            "--quantize nf4 needs a CUDA GPU (bitsandbytes' NF4 training kernels); on this machine "
            "(no GPU) train with --quantize none"
        )
    source = train_data.model_source(settings)
    side = _side(config, train_data.render_side(source))
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        problem = memory_problem(config.quantize, side, free / 2**30, total / 2**30)
        if problem:
            raise TrainingRefused(problem)
    checkpoint = config.work_dir / CHECKPOINT
    resumed = _resume_state(config, checkpoint, side)
    sampler_prompts = Sampler.prompts(config.trigger)
    note("encoding the captions (the text encoders are freed afterwards)")
    prompts = [image.caption for image in config.images] + sampler_prompts + [""]
    embeds = train_data.encode_prompts(settings, source, prompts, device, dtype, config.quantize == "nf4")
    vae = train_data.load_vae(settings, source, device, dtype)
    factor = train_data.vae_factor(vae)
    note(f"caching the latents of {len(config.images)} pictures at about {side}² (aspect-ratio buckets)")
    latents = train_data.encode_images(vae, config.images, side, factor * 2)
    transformer = _load_transformer(settings, source, device, dtype, config.quantize == "nf4")
    torch.manual_seed(config.seed)  # peft draws the adapter's initial A matrices from torch's global RNG
    add_lora(transformer, config.rank)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-4)
    losses: list[float] = []
    start = 0
    if resumed:
        start, losses = _load_checkpoint(transformer, optimizer, checkpoint)
        note(f"resuming at step {start} of {config.steps} from {checkpoint}")
    sampler = Sampler(settings, source, vae, transformer, embeds, config, side, device, dtype)
    if start == 0 and config.sample_every:
        sampler.sample(0)  # the untrained base: the contact sheet's first row
    shift = train_data.schedule_shift(settings, source, DEFAULT_SHIFT)
    run = _Run(config, transformer, optimizer, latents, embeds, shift, device, dtype, losses)
    on_start(start, config.steps)
    _loop(run, sampler, checkpoint, side, start, on_step)
    _save_checkpoint(run, checkpoint, config.steps, side)  # until the style is in place
    (config.work_dir / "losses.json").write_text(json.dumps(losses))
    if config.sample_every:
        sampler.sample(config.steps)
    staged = config.work_dir / "style"
    note("checking the style: it must load through the catalog and change the output")
    change = publishable(settings, sampler, manifest, staged, ADAPTER)
    sheet = sampler.contact_sheet if config.sample_every else None
    return TrainResult(staged, start, config.steps, losses, change, sheet)


def _loop(run: _Run, sampler: Sampler, checkpoint: Path, side: int, start: int, on_step: OnStep) -> None:
    """Steps start+1 … config.steps, with checkpoints and samples at their intervals."""
    config = run.config
    step = start
    try:
        with _ctrl_c() as stop_requested:
            for step in range(start + 1, config.steps + 1):
                on_step(step, run.step(step))
                if stop_requested.is_set():
                    _save_checkpoint(run, checkpoint, step, side)
                    raise TrainingStopped(step, checkpoint)
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                    _save_checkpoint(run, checkpoint, step, side)
                if config.sample_every and step % config.sample_every == 0 and step < config.steps:
                    sampler.sample(step)
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed(
            f"the GPU ran out of memory at step {step} ({str(exc).splitlines()[0][:160]}); --quantize nf4 "
            "or a lower --resolution needs less, and --resume continues from the last checkpoint"
        ) from exc


def _side(config: TrainingConfig, demo_side: int | None) -> int:
    """The training side: --resolution, else the model's render side; within what the model renders."""
    low, high, multiple = (16, demo_side, 16) if demo_side else (256, 1024, 64)
    side = config.resolution or high
    if not low <= side <= high or side % multiple:
        model = "the demo model" if demo_side else "HiDream-I1"
        raise TrainingRefused(
            f"--resolution {side}: {model} trains at {low} to {high} pixels a side, in steps of {multiple} "
            f"(default {high}, the size it renders)"
        )
    return side


def _load_transformer(
    settings: Settings, source: str, device: str, dtype: torch.dtype, nf4: bool
) -> HiDreamImageTransformer2DModel:
    kwargs: dict[str, object] = {
        "dtype": dtype,
        "cache_dir": str(settings.resolved_model_cache_dir),
        "local_files_only": Path(source).is_dir(),
    }
    if nf4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    transformer = HiDreamImageTransformer2DModel.from_pretrained(source, subfolder="transformer", **kwargs)
    if not nf4:  # bitsandbytes places quantized weights itself
        transformer.to(device)
    transformer.requires_grad_(False)
    transformer.enable_gradient_checkpointing()
    return transformer.train()


def add_lora(transformer: HiDreamImageTransformer2DModel, rank: int) -> None:
    """peft keeps adapter weights in fp32 over a bf16 base (autocast_adapter_dtype), as training wants."""
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    transformer.set_adapter(ADAPTER)


def patch_layout(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) latents in the layout the transformer returns in training mode: (B, C, tokens, p·p),
    tokens in row order and each patch's pixels in row order."""
    b, c, h, w = latents.shape
    grid = latents.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 1, 2, 4, 3, 5)
    return grid.reshape(b, c, (h // patch) * (w // patch), patch * patch)


def step_generator(seed: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(state))


@dataclass
class _Run:
    config: TrainingConfig
    transformer: HiDreamImageTransformer2DModel
    optimizer: torch.optim.Optimizer
    latents: list[train_data.CachedLatents]
    embeds: dict[str, train_data.PromptEmbeds]
    shift: float
    device: str
    dtype: torch.dtype
    losses: list[float]

    def picture(self, step: int) -> int:
        """Each epoch visits every picture once, in an order drawn from (seed, epoch)."""
        count = len(self.latents)
        epoch, offset = divmod(step - 1, count)
        return int(np.random.default_rng([self.config.seed, epoch]).permutation(count)[offset])

    def step(self, step: int) -> float:
        index = self.picture(step)
        x0, caption = self.latents[index].latents, self.config.images[index].caption
        generator = step_generator(self.config.seed, step)
        embeds = self.embeds[caption].to(self.device, self.dtype)
        loss = flow_matching_loss(
            self.transformer, x0, embeds, generator, self.device, self.dtype, self.shift
        )
        value = optimize(self.transformer, self.optimizer, loss)
        self.losses.append(value)
        return value


def flow_matching_loss(
    transformer: HiDreamImageTransformer2DModel,
    x0: torch.Tensor,
    embeds: train_data.PromptEmbeds,
    generator: torch.Generator,
    device: str,
    dtype: torch.dtype,
    shift: float = DEFAULT_SHIFT,
) -> torch.Tensor:
    """The loss of one picture's normalised latents `x0` at a σ drawn from `generator`."""
    noise = torch.randn(x0.shape, generator=generator)
    u = torch.sigmoid(torch.randn((1,), generator=generator))  # logit-normal
    sigma = shift * u / (1 + (shift - 1) * u)
    noisy = (1 - sigma) * x0 + sigma * noise
    output = transformer(
        hidden_states=noisy.to(device, dtype),
        timesteps=(sigma * 1000).to(device),
        encoder_hidden_states_t5=embeds.t5,
        encoder_hidden_states_llama3=embeds.llama,
        pooled_embeds=embeds.pooled,
        return_dict=False,
    )[0]
    target = patch_layout(noise - x0, transformer.config.patch_size).to(device)
    # Non-square pictures are padded to the model's longest sequence: only their own tokens count.
    return F.mse_loss(-output[:, :, : target.shape[2]].float(), target.float())


def optimize(
    transformer: HiDreamImageTransformer2DModel, optimizer: torch.optim.Optimizer, loss: torch.Tensor
) -> float:
    """Backward, clip the adapter's gradient norm to 1, step; the loss as a number."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in transformer.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _save_checkpoint(run: _Run, folder: Path, step: int, side: int) -> None:
    """Written beside and renamed into place: a crash mid-save leaves the previous checkpoint whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    safetensors.torch.save_file(adapter_state(run.transformer, ADAPTER), tmp / "adapter.safetensors")
    trainer = {"optimizer": run.optimizer.state_dict(), "step": step, "losses": run.losses}
    torch.save(trainer, tmp / "trainer.pt")
    (tmp / "run.json").write_text(json.dumps(run.config.run_key(side) | {"step": step}))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _resume_state(config: TrainingConfig, checkpoint: Path, side: int) -> bool:
    """Whether to continue the checkpoint; refuse a mismatch, and a fresh start over an unfinished run."""
    run_file = checkpoint / "run.json"
    if not run_file.is_file():
        if config.resume:
            raise TrainingRefused(
                f"--resume: no checkpoint of {config.name!r} in {config.work_dir}; run without --resume"
            )
        return False
    saved = json.loads(run_file.read_text())
    if not config.resume:
        raise TrainingRefused(
            f"an unfinished run of {config.name!r} stopped at step {saved['step']} (checkpoint in "
            f"{checkpoint}): add --resume to continue it, or delete {config.work_dir} to start afresh"
        )
    differs = [key for key, value in config.run_key(side).items() if saved.get(key) != value]
    if differs:
        raise TrainingRefused(
            f"--resume: the checkpoint in {checkpoint} was trained with other {', '.join(differs)}; resume "
            "with the same pictures, captions and options, or delete the folder to start afresh"
        )
    if saved["step"] >= config.steps:
        raise TrainingRefused(
            f"--resume: the checkpoint is at step {saved['step']}; ask for more --steps than that"
        )
    return True


def _load_checkpoint(
    transformer: HiDreamImageTransformer2DModel, optimizer: torch.optim.Optimizer, folder: Path
) -> tuple[int, list[float]]:
    state = safetensors.torch.load_file(str(folder / "adapter.safetensors"))
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise TrainingRefused(f"--resume: the checkpoint in {folder} does not fit this model's transformer")
    trainer = torch.load(folder / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    return int(trainer["step"]), list(trainer["losses"])


class _ctrl_c:  # a context manager, named like contextlib's
    """The first Ctrl-C asks the loop to save a checkpoint after the current step and stop; a second one
    stops at once. Only the main thread can take signals: elsewhere Ctrl-C keeps its default."""

    def __enter__(self) -> threading.Event:
        self.requested = threading.Event()
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.warning("Ctrl-C: saving a checkpoint after this step (Ctrl-C again stops at once)")

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
