"""Load the HiDream diffusers pipeline once and render a request's images, in one batch or one at a time.

Everything here is synchronous and runs in the generation worker's thread, never on the event loop.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import HiDreamImagePipeline
from PIL import Image

from noisett_mcp.engine import img2img
from noisett_mcp.engine.adapters import StyleAdapters
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.demo import MARKER, write_demo_model
from noisett_mcp.engine.fast import compile_wanted, speed_up
from noisett_mcp.errors import BatchOutOfMemory, GenerationCancelled, ModelUnavailable
from noisett_mcp.schemas import GenerationSpec
from noisett_mcp.styles.manifest import Style
from noisett_mcp.weights.manifest import MANIFEST, check_manifest
from noisett_mcp.weights.stages import LoadStages

log = logging.getLogger(__name__)
BITSANDBYTES = ("nf4", "int8")  # NOISETT_QUANTIZE modes loaded through bitsandbytes (fp8 is engine/fast.py)

# Library progress bars and chatter would clutter the server's logs (and stdio belongs to MCP).
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class EngineInfo:
    device: str
    render_side: int  # HiDream renders about render_side² pixels
    size_multiple: int  # and rounds sizes down to this multiple


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ModelUnavailable(
            f"NOISETT_DEVICE={setting}, but torch {torch.__version__} ({build}) sees no CUDA GPU here; "
            "set NOISETT_DEVICE=auto or cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    return setting


def check_reachable(config: EngineConfig, device: str) -> None:
    """Fail in seconds, not after a minute of hub retries, when a hub model is neither cached nor reachable
    (the first thing a new user meets on a machine without a GPU or network)."""
    folder = Path(config.model)
    if config.is_demo or folder.is_dir():
        return
    from huggingface_hub import model_info, try_to_load_from_cache

    cache_dir = config.model_cache_dir
    if isinstance(try_to_load_from_cache(config.model, "model_index.json", cache_dir=str(cache_dir)), str):
        return  # cached: from_pretrained can load it without the hub
    try:
        model_info(config.model, timeout=10)
    except Exception as exc:
        where = "no GPU here and " if device == "cpu" else ""
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(
            f"cannot load {config.model}: {where}it is not in the model cache ({cache_dir}) and the "
            f"Hugging Face hub cannot be reached ({reason[:200]}). Try --model demo (NOISETT_MODEL=demo, "
            "the tiny offline model), or set NOISETT_MODEL to a local folder that holds the pipeline"
        ) from exc


def _bind_step_noise(scheduler: Any, generator: torch.Generator | list[torch.Generator]) -> None:
    """Dev and Fast ship FlowMatchLCMScheduler, which draws fresh noise in every step; the pipeline calls
    its step() without a generator, so that noise came from torch's global RNG and one seed gave a
    different image each time. Bind the images' generators (each run rebinds the class's method)."""
    step = type(scheduler).step
    if "generator" in inspect.signature(step).parameters:
        scheduler.step = functools.partial(step, scheduler, generator=generator)


def engine_dtype(device: str) -> torch.dtype:
    """bf16 where the GPU has it; float32 on CPU, where bf16 is slow and lossy."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


class Engine:
    """One loaded pipeline. `generate` must only be called from the single generation worker."""

    # Test hook: raised at the next denoising step, to exercise the real failure path of the worker.
    inject_failure: BaseException | None = None

    def __init__(
        self, config: EngineConfig, pipe: HiDreamImagePipeline | None = None, stages: LoadStages | None = None
    ) -> None:
        """Load `config.model`; or, given `pipe` (components built elsewhere, in `engine_dtype`), run
        the same setup on it: the first-light benchmark's full-size random-weight pipeline does.
        `stages` records the load's stages for /healthz and progress."""
        self.config = config
        self.stages = stages if stages is not None else LoadStages(since_process_start=False)
        self.device = _device(config.device)
        if config.quantize in BITSANDBYTES and not self.device.startswith("cuda"):
            # The CLI refuses this at start where it can see it; torch's own view can differ (no CUDA build).
            raise ModelUnavailable(
                f"NOISETT_QUANTIZE={config.quantize} quantizes with bitsandbytes on a CUDA GPU, and torch "
                f"runs on {self.device} here: set NOISETT_QUANTIZE=none"
            )
        self.dtype = engine_dtype(self.device)
        if pipe is None and not config.weights.blob_model:
            check_reachable(config, self.device)
        loaded = pipe if pipe is not None else self._load()
        self.stages.begin("warm-up")
        self.pipe = self._place(loaded)
        self.styles = StyleAdapters(self.pipe, config.max_loaded_styles)
        if config.offload == "none" and compile_wanted(config, self.device):
            self.styles.open_slot()  # before the blocks compile: every style then runs their graphs
        self.fast = speed_up(self.pipe, config, self.device)
        # The images of one request in one pipeline call (generate_batch), or one after another.
        self.batching = config.batch == "on" or (config.batch == "auto" and self.device == "cpu")
        vae_factor = self.pipe.vae_scale_factor
        self.info = EngineInfo(
            device=self.device,
            render_side=self.pipe.default_sample_size * vae_factor,
            size_multiple=vae_factor * 2,
        )

    def _load(self) -> HiDreamImagePipeline:
        config = self.config
        cache_dir = config.model_cache_dir
        source = config.model
        if config.is_demo:
            source = str(write_demo_model(config.demo_model_dir))
        folder = Path(source)
        if config.quantize == "none" and (config.weights.blob_model or folder.is_dir()):
            return self._stream(folder)
        if (folder / MANIFEST).is_file():  # a prepared model (synced from Blob when quantized)
            self._check_manifest((folder / MANIFEST).read_text(), str(folder / MANIFEST))
        kwargs: dict[str, object] = {"dtype": self.dtype, "cache_dir": str(cache_dir)}
        if folder.is_dir():
            kwargs["local_files_only"] = True
        if not (folder / "text_encoder_4").is_dir():
            # The HiDream repos ship without Llama-3.1 (it is gated): load it and pass it in.
            kwargs.update(self._load_llama(cache_dir))
        if config.quantize in BITSANDBYTES:
            kwargs["quantization_config"] = diffusers.PipelineQuantizationConfig(
                quant_backend="bitsandbytes_4bit" if config.quantize == "nf4" else "bitsandbytes_8bit",
                quant_kwargs=self._bnb_kwargs(),
                components_to_quantize=["transformer"],
            )
        log.info("loading %s on %s (%s)", source, self.device, self.dtype)
        pipe = HiDreamImagePipeline.from_pretrained(source, **kwargs)
        marker = folder / MARKER
        if marker.is_file():  # the demo model renders small images
            pipe.default_sample_size = json.loads(marker.read_text())["sample_size"]
        return pipe

    def _stream(self, folder: Path) -> HiDreamImagePipeline:
        """A local or Blob pipeline, streamed onto the device (engine/streaming.py); offload streams to
        CPU memory, where its hooks keep the weights."""
        from noisett_mcp.engine.streaming import stream_pipeline
        from noisett_mcp.weights.files import open_model_files

        files = open_model_files(self.config.weights, folder)
        try:
            files.check_pipeline()
            if MANIFEST in files.files:
                text = files.read_range(MANIFEST, 0, files.files[MANIFEST].size)
                self._check_manifest(text, files.where(MANIFEST))
            given = {}
            if "text_encoder_4/config.json" not in files.files:  # the HiDream repos ship without Llama
                given = self._load_llama(self.config.model_cache_dir)
            target = self.device if self.config.offload == "none" else "cpu"
            log.info("loading %s on %s (%s), streaming its weights", files.location, target, self.dtype)
            pipe = stream_pipeline(files, target, self.dtype, self.stages, given)
        finally:
            files.close()
        marker = files.folder / MARKER
        if marker.is_file():  # the demo model renders small images
            pipe.default_sample_size = json.loads(marker.read_text())["sample_size"]
        return pipe

    def _check_manifest(self, text: str | bytes, where: str) -> None:
        config = self.config
        check_manifest(
            text,
            quantize=config.quantize,
            variant=config.variant,
            model=config.weights.model,
            where=where,
            versions=library_versions(),
        )

    def _place(self, pipe: HiDreamImagePipeline) -> HiDreamImagePipeline:
        if self.config.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif self.config.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _bnb_kwargs(self) -> dict[str, object]:
        if self.config.quantize == "nf4":
            return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": self.dtype}
        return {"load_in_8bit": True}

    def _load_llama(self, cache_dir: Path) -> dict[str, object]:
        name = self.config.llama_model
        extra: dict[str, object] = {}
        if self.config.quantize in BITSANDBYTES:
            extra["quantization_config"] = transformers.BitsAndBytesConfig(**self._bnb_kwargs())
        local = Path(name).is_dir()
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name, cache_dir=str(cache_dir), local_files_only=local
        )
        encoder = transformers.LlamaForCausalLM.from_pretrained(
            name,
            output_hidden_states=True,
            output_attentions=True,
            dtype=self.dtype,
            cache_dir=str(cache_dir),
            local_files_only=local,
            **extra,
        )
        return {"tokenizer_4": tokenizer, "text_encoder_4": encoder}

    def generate(
        self,
        spec: GenerationSpec,
        index: int,
        on_step: Callable[[int], None],
        cancelled: Callable[[], bool],
        style: Style | None = None,
        source: Image.Image | None = None,
    ) -> Image.Image:
        """Render image `index` of `spec` alone (see generate_batch)."""
        return self.generate_batch(spec, [index], on_step, cancelled, style, source)[0]

    def generate_batch(
        self,
        spec: GenerationSpec,
        indices: list[int],
        on_step: Callable[[int], None],
        cancelled: Callable[[], bool],
        style: Style | None = None,
        source: Image.Image | None = None,
    ) -> list[Image.Image]:
        """Render images `indices` of `spec` in one pipeline call: the prompt is encoded once, and each
        denoising step runs all their latents together. `on_step(n)` is called after each of the n
        steps. `style` is spec.style's adapter (None for the base style); raise StyleRefused if it is
        unusable. On CUDA out of memory with several images, batching stays off for this process and
        BatchOutOfMemory asks the caller to render them one at a time. `source` (image-to-image) is the
        source fitted to the spec's size; spec.strength says how much of the schedule runs from it."""
        if cancelled():
            raise GenerationCancelled
        running = (style.name, style.sha256) if style else ("none", None)
        if running != (spec.style, spec.style_sha256):  # the record must say what really ran
            raise ValueError(f"adapter {running} does not match the spec's style {spec.style!r}")

        def step_end(pipe: HiDreamImagePipeline, step: int, timestep: object, tensors: dict) -> dict:
            if cancelled():
                raise GenerationCancelled
            if self.inject_failure is not None:
                failure, self.inject_failure = self.inject_failure, None
                raise failure
            on_step(step + 1)
            return {}

        # Noise from a CPU generator seeded per image: the same seed gives the same image on any device,
        # and in a batch (the pipeline draws each image's latents from its own generator).
        generators = [torch.Generator("cpu").manual_seed(spec.seeds[index]) for index in indices]
        # Right before the run, in the worker: this request's adapter and no other.
        self.styles.activate(style, spec.style_strength)
        generator = generators if len(indices) > 1 else generators[0]
        start: dict[str, object] = {}
        if source is not None and spec.denoise_steps < spec.steps:  # at strength 1: text-to-image
            img2img.check_scheduler(self.pipe)
            latents = img2img.encode(self.pipe, source)
            if spec.denoise_steps == 0:
                return [img2img.decode(self.pipe, latents) for _ in indices]
            start = img2img.start(self.pipe, latents, generator, spec.steps, spec.denoise_steps, self.dtype)
        _bind_step_noise(self.pipe.scheduler, generator)
        try:
            result = self.pipe(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt or None,
                width=spec.width,
                height=spec.height,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance,
                num_images_per_prompt=len(indices),
                generator=generator,
                callback_on_step_end=step_end,
                output_type="pil",
                **start,
            )
        except torch.OutOfMemoryError as exc:
            if len(indices) == 1:
                raise
            self.batching = False
            log.warning(
                "%d images in one batch ran out of GPU memory: this process renders one image at a time "
                "from now on (NOISETT_BATCH=off skips the attempt)",
                len(indices),
            )
            self.free_memory()
            raise BatchOutOfMemory(len(indices)) from exc
        return list(result.images)

    def free_memory(self) -> None:
        """After a failure (CUDA out of memory above all), give the allocator's cache back."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
