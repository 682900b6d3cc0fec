"""`noisett-mcp styles train`, before any torch: the folder of pictures checked, the name and the base model
checked, and what the run will need. Every refusal is one line that says what is allowed, and comes before
a second of GPU time is spent.

A training folder holds pictures (PNG, JPEG or WebP, within image-to-image's source caps: 10 MiB and
40 megapixels, read from the header) and, optionally, one caption per picture: `NAME.txt` beside
`NAME.png`. A picture without a caption is trained on the trigger alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from noisett_mcp.config import Settings
from noisett_mcp.errors import NoisettError, RequestError
from noisett_mcp.schemas import ASPECT_RATIOS, MAX_PROMPT_CHARS, rendered_size
from noisett_mcp.sources import MAX_SOURCE_BYTES, MAX_SOURCE_PIXELS, SOURCE_FORMATS
from noisett_mcp.styles.manifest import BASE_STYLE, SLUG_PATTERN, StyleManifest, TrainingRecord

MIN_IMAGES = 3
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_SUFFIX = ".txt"
HIDREAM_PIPELINE = "HiDreamImagePipeline"
Quantize = Literal["none", "nf4"]

# Peak GPU memory of a training run, in GiB, estimated from the measured weight sizes (DESIGN.md: the
# transformer 31.9 GiB in bf16, Llama 15.0, T5 9.1) plus LoRA, optimiser and checkpointed activations.
# The text encoders run first and leave before the transformer loads, so the peak is the larger stage.
# benchmarks/gpu/train_style.py measures the real figures.
_TEXT_STAGE_GIB = {"none": 26.5, "nf4": 17.0}  # Llama (bf16 or NF4) + T5-XXL + both CLIPs
_TRANSFORMER_GIB = {"none": 31.9, "nf4": 9.8}
_ADAPTER_GIB = 1.0  # rank-32 LoRA in fp32 with its gradients and two AdamW moments, and slack
_ACTIVATIONS_GIB_AT_1024 = 6.5  # one 1024² image with gradient checkpointing; scales with pixels


class TrainingRefused(RequestError):
    """`styles train` cannot start with this input; the message says what is allowed."""


class TrainingFailed(NoisettError):
    """The trained style failed its own check (the catalog refused it, or it changes nothing): it does
    not enter the catalog; the checkpoint stays for --resume."""


@dataclass(frozen=True)
class TrainingConfig:
    """One training run, as `styles train` was asked for it (checked)."""

    name: str
    images: list[TrainingImage]
    trigger: str
    variant: Literal["full", "dev", "fast"]
    steps: int
    rank: int
    learning_rate: float
    resolution: int | None  # None: the model's own render side (1024; the demo model's 64)
    seed: int
    quantize: Quantize
    sample_every: int  # 0: samples of the base and the end only
    checkpoint_every: int  # 0: only when stopped and at the end
    work_dir: Path  # checkpoints, samples and the contact sheet
    resume: bool

    def run_key(self, resolution: int) -> dict[str, object]:
        """What a checkpoint must have been trained with for --resume to continue it."""
        return {
            "name": self.name,
            "rank": self.rank,
            "resolution": resolution,
            "seed": self.seed,
            "quantize": self.quantize,
            "images": sorted(image.sha256 for image in self.images),
            "captions": [image.caption for image in self.images],
        }


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str  # the text it is trained on, trigger included
    sha256: str
    width: int
    height: int


def default_trigger(name: str) -> str:
    return f"in {name} style"


def check_name(name: str) -> None:
    if not SLUG_PATTERN.fullmatch(name) or name == BASE_STYLE:
        raise TrainingRefused(
            f"--name {name!r} is not a style name: 1 to 48 lowercase letters, digits and inner hyphens "
            f"(like 'acme-line'), and not {BASE_STYLE!r}"
        )


def name_taken(name: str, styles_dir: Path, offered: list[str]) -> None:
    """Refuse a name that a style already has (in the styles folder, or offered for the model)."""
    files = [styles_dir / f"{name}{suffix}" for suffix in (".toml", ".safetensors")]
    if any(path.exists() for path in files) or name in offered:
        raise TrainingRefused(
            f"--name {name!r} is taken: a style of that name is already in {styles_dir} or offered for "
            "this model; choose another name, or remove that style first"
        )


def training_images(folder: Path, trigger: str) -> list[TrainingImage]:
    """The pictures of `folder` with their captions; raise TrainingRefused for anything that is not a
    usable picture or a caption beside one, and for fewer than MIN_IMAGES pictures."""
    if not folder.is_dir():
        raise TrainingRefused(f"{folder} is not a folder: give a folder of PNG, JPEG or WebP pictures")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    captions = {p.stem: p for p in files if p.suffix.lower() == CAPTION_SUFFIX}
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES | {CAPTION_SUFFIX}]
    if others:
        raise TrainingRefused(
            f"not a picture or a caption: {', '.join(others[:5])}; the folder may hold only PNG, JPEG or "
            "WebP pictures and NAME.txt captions beside them"
        )
    orphans = sorted(set(captions) - {p.stem for p in pictures})
    if orphans:
        raise TrainingRefused(
            f"captions with no picture: {', '.join(captions[s].name for s in orphans[:5])}; a caption "
            "NAME.txt describes the picture NAME.png (or .jpg, .webp) beside it"
        )
    images = [_checked_image(p, _caption(captions.get(p.stem), trigger)) for p in pictures]
    if len(images) < MIN_IMAGES:
        raise TrainingRefused(
            f"{folder} holds {len(images)} usable picture(s); training needs at least {MIN_IMAGES} "
            "(a style learns best from 10 to 40 pictures of one look)"
        )
    return images


def _caption(path: Path | None, trigger: str) -> str:
    text = " ".join(path.read_text(encoding="utf-8", errors="replace").split()) if path else ""
    if len(text) > MAX_PROMPT_CHARS:
        raise TrainingRefused(f"caption {path} has {len(text)} characters; the most is {MAX_PROMPT_CHARS}")
    if not text:
        return trigger
    return text if trigger.lower() in text.lower() else f"{text}, {trigger}"


def _checked_image(path: Path, caption: str) -> TrainingImage:
    """A picture within the caps: size from the file system, pixels from the header, then one decode
    so that a truncated file is refused now rather than mid-run."""
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise TrainingRefused(
            f"{path.name} is {size / 2**20:.1f} MiB; the most allowed is {MAX_SOURCE_BYTES // 2**20} MiB "
            "per picture: scale it down or save it as JPEG"
        )
    data = path.read_bytes()
    try:
        with Image.open(path, formats=SOURCE_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise TrainingRefused(
                    f"{path.name} claims {width}×{height} pixels; the most allowed is "
                    f"{MAX_SOURCE_PIXELS / 1e6:g} megapixels: scale it down"
                )
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise TrainingRefused(f"{path.name} is not a PNG, JPEG or WebP picture ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise TrainingRefused(f"{path.name} is damaged or truncated ({exc}); replace or remove it") from exc
    return TrainingImage(path, caption, hashlib.sha256(data).hexdigest(), width, height)


def check_base_model(settings: Settings) -> None:
    """Refuse a model that is not a HiDream-I1 pipeline (read from its model_index.json where it is on
    disk or in the hub cache; a hub id not yet cached must name HiDream)."""
    if settings.is_demo:
        return
    if settings.blob_model:
        raise TrainingRefused(
            f"--model {settings.model}: training reads a model folder or a hub id, not a Blob prefix; "
            "give the folder the model is synced to"
        )
    index = Path(settings.model) / "model_index.json"
    if not index.is_file() and not Path(settings.model).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            settings.model, "model_index.json", cache_dir=str(settings.resolved_model_cache_dir)
        )
        if not isinstance(cached, str):
            if "hidream" in settings.model.lower():
                return
            raise TrainingRefused(_not_hidream(settings.model, "its name does not say HiDream"))
        index = Path(cached)
    if not index.is_file():
        raise TrainingRefused(_not_hidream(settings.model, "the folder has no model_index.json"))
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != HIDREAM_PIPELINE:
        raise TrainingRefused(_not_hidream(settings.model, f"it is a {class_name}"))


def _not_hidream(model: str, why: str) -> str:
    return (
        f"--model {model} is not a HiDream-I1 pipeline ({why}); styles train on HiDream-I1 Full, Dev or "
        "Fast (a hub id or a local folder), or on `demo`"
    )


def buckets(side: int, multiple: int) -> dict[str, tuple[int, int]]:
    """The sizes generate_image renders for each aspect ratio at `side`: the training buckets."""
    return {name: rendered_size(name, side, multiple) for name in ASPECT_RATIOS}


def bucket_for(width: int, height: int, side: int, multiple: int) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the picture's (in log ratio, so 2:1 is as far from 1:1
    as 1:2)."""
    ratio = math.log(width / height)
    sizes = buckets(side, multiple).values()
    return min(sizes, key=lambda size: abs(math.log(size[0] / size[1]) - ratio))


def memory_needed_gib(quantize: Quantize, resolution: int) -> float:
    train = _TRANSFORMER_GIB[quantize] + _ADAPTER_GIB + _ACTIVATIONS_GIB_AT_1024 * (resolution / 1024) ** 2
    return round(max(_TEXT_STAGE_GIB[quantize], train) * 1.1, 1)  # 10 % for the allocator's slack


def memory_problem(quantize: Quantize, resolution: int, free_gib: float, total_gib: float) -> str | None:
    """Why the run would not fit a GPU with `free_gib` free, saying what lowers the need; None if it fits."""
    needed = memory_needed_gib(quantize, resolution)
    if needed <= free_gib:
        return None
    lower = []
    if quantize == "none":
        lower.append(f"--quantize nf4 needs about {memory_needed_gib('nf4', resolution)} GiB")
    if resolution > 512:
        lower.append(f"--resolution 512 about {memory_needed_gib(quantize, 512)} GiB")
    hint = "; ".join(lower) if lower else "no option lowers it further: use a larger GPU"
    return (
        f"not enough GPU memory: training at {resolution}² {'in NF4' if quantize == 'nf4' else 'in bf16'} "
        f"needs about {needed} GiB, and this GPU has {free_gib:.1f} GiB free of {total_gib:.1f} GiB; {hint}"
    )


def manifest_toml(manifest: StyleManifest) -> str:
    """The manifest as TOML (strings written as JSON strings, which TOML reads the same), read back and
    checked, so a file that the catalog would refuse is never written."""
    lines = []
    training: TrainingRecord | None = None
    for key, value in manifest.model_dump(exclude_none=True).items():
        if key == "training":
            training = manifest.training
            continue
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    if training is not None:
        lines += ["", "[training]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in training.model_dump().items()]
    text = "\n".join(lines) + "\n"
    if StyleManifest.model_validate(tomllib.loads(text)) != manifest:
        raise AssertionError("the manifest did not survive its TOML round trip")
    return text
