"""The wire schemas: what tools take and return, and the generation parameters that travel from the
MCP surface and the CLI to the service, the queue and the engine. No torch here."""

from __future__ import annotations

import math
import re
import secrets
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from noisett_mcp.config import Settings

AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3"]
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
    "3:2": (3, 2),
    "2:3": (2, 3),
}
ImageFormat = Literal["png", "webp", "jpeg"]
Status = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

# HiDream's variants need their own defaults, which the pipeline does not set: (steps, guidance).
VARIANT_DEFAULTS: dict[str, tuple[int, float]] = {"full": (50, 5.0), "dev": (28, 0.0), "fast": (16, 0.0)}
# Image-to-image starts part-way through the schedule by passing `sigmas`. Dev and Fast ship
# FlowMatchLCMScheduler, which takes them; the pipeline ignores them for Full's UniPCMultistepScheduler.
IMAGE_TO_IMAGE_VARIANTS = frozenset({"dev", "fast"})

# The demo model's 1-block VAE renders DEMO_RENDER_SIDE² images (the real model: 1024²).
DEMO_RENDER_SIDE = 64

MAX_PROMPT_CHARS = 2000
DEFAULT_STRENGTH = 0.6  # image-to-image: keeps the source's layout and colours, changes the rest
MAX_SEED = 2**32 - 1
IMAGE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def new_image_id() -> str:
    return secrets.token_hex(16)


def is_image_id(value: object) -> bool:
    return isinstance(value, str) and IMAGE_ID_PATTERN.fullmatch(value) is not None


def rendered_size(aspect_ratio: str, side: int = 1024, multiple: int = 16) -> tuple[int, int]:
    """The size HiDream really renders for an aspect ratio: it rescales any request to about
    side² pixels, rounded down to a multiple of 2 × the VAE factor (the pipeline's own arithmetic)."""
    w, h = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(side * side / (w * h))
    return int(w * scale // multiple * multiple), int(h * scale // multiple * multiple)


def default_geometry(settings: Settings) -> tuple[int, int]:
    """(side, multiple) of the rendered size before the model loads: HiDream renders about 1024²
    (the demo model 64²), rounded down to multiples of 2 × its VAE factor."""
    return (DEMO_RENDER_SIDE, 2) if settings.is_demo else (1024, 16)


def denoise_steps(steps: int, strength: float | None) -> int:
    """How many of `steps` an image-to-image run denoises (SDEdit): the last strength × steps of the
    schedule, rounded. A strength strictly between 0 and 1 always keeps part of the source and changes
    part of it: at least one step, and not all of them (where there are two). Text-to-image runs all."""
    if strength is None or strength >= 1:
        return steps
    if strength <= 0:
        return 0
    return min(max(math.floor(steps * strength + 0.5), 1), max(steps - 1, 1))


def aspect_ratio_help(side: int = 1024, multiple: int = 16) -> str:
    sizes = ", ".join(
        "{} → {}×{}".format(name, *rendered_size(name, side, multiple)) for name in ASPECT_RATIOS
    )
    return f"Aspect ratio; the model renders about one megapixel: {sizes}."


# One definition per generation parameter: the tool's signature, GenerationRequest and the CLI share them.
# Their descriptions are the LLM's manual.
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What the image shows: subject, setting, composition, mood. Plain language.",
    ),
]
NegativePrompt = Annotated[
    str, Field(max_length=MAX_PROMPT_CHARS, description="What the image must not show.")
]
StyleName = Annotated[
    str, Field(max_length=64, description="A brand style from list_styles; `none` for the base model.")
]
StyleStrength = Annotated[
    float | None,
    Field(
        ge=0,
        le=2,
        description="How strongly the style applies, 0 (not at all) to 2; omit for the style's "
        "default strength (list_styles shows it).",
    ),
]
Seed = Annotated[
    int | None, Field(ge=0, le=MAX_SEED, description="Seed for reproducible results; omit for a random one.")
]
Steps = Annotated[
    int | None,
    Field(ge=1, le=100, description="Denoising steps; omit for the model's default (more: slower)."),
]
Guidance = Annotated[
    float | None,
    Field(ge=0, le=20, description="Prompt adherence (CFG scale); omit for the model's default."),
]
Count = Annotated[int, Field(ge=1, le=4, description="How many images, each with its own seed.")]
Format = Annotated[ImageFormat, Field(description="File format of the full image.")]
SourceImageId = Annotated[
    str | None,
    Field(
        max_length=64,
        description="Start from one of your images (an id from generate_image) instead of noise: to "
        "restyle it, or to make variations of it (a low strength and count > 1).",
    ),
]
Strength = Annotated[
    float | None,
    Field(
        ge=0,
        le=1,
        description="Only with a source image: how much to change it, 0 to 1. Low values (0.2-0.4) keep "
        "its layout, shapes and colours and change details and texture; high values (0.7-0.9) keep only "
        f"the rough composition; 1 ignores the source. Omit for {DEFAULT_STRENGTH}.",
    ),
]


class GenerationRequest(BaseModel):
    """What a caller asks for, before styles and model defaults are applied (the service resolves it
    into a GenerationSpec)."""

    model_config = ConfigDict(frozen=True)

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    style: StyleName = "none"
    style_strength: StyleStrength = None
    aspect_ratio: Annotated[AspectRatio, Field(description=aspect_ratio_help())] = "1:1"
    seed: Seed = None
    steps: Steps = None
    guidance: Guidance = None
    count: Count = 1
    format: Format = "png"
    source_image_id: SourceImageId = None
    strength: Strength = None


class GenerationSpec(BaseModel):
    """One fully resolved generation: everything needed to reproduce its images."""

    prompt: str
    negative_prompt: str = ""
    user_prompt: str = ""  # as asked, before the style's template (what reproduces the image)
    user_negative_prompt: str = ""
    style: str = "none"
    style_strength: float = 0.0
    style_sha256: str | None = None
    aspect_ratio: AspectRatio = "1:1"
    width: int
    height: int
    steps: int
    guidance: float
    seeds: list[int]
    format: ImageFormat = "png"
    model: str
    variant: str
    # Image-to-image: where the run started (None for text-to-image).
    source_image_id: str | None = None
    source_sha256: str | None = None
    strength: float | None = None
    source_fit: str | None = None

    @property
    def denoise_steps(self) -> int:
        """Steps each image really runs: all of them, or the tail an image-to-image strength keeps."""
        return denoise_steps(self.steps, self.strength)


class ImageInfo(BaseModel):
    id: str = Field(description="Image id: pass it to get_image.")
    uri: str = Field(description="MCP resource URI of the full image.")
    status: Status = Field(description="queued, running, done, failed or cancelled.")
    seed: int = Field(description="Seed of this image; reuse it to reproduce the image.")
    width: int
    height: int
    prompt: str = Field(description="The prompt sent to the model, after the style's template.")
    user_prompt: str = Field(
        "",
        description="The prompt as asked, before the style's template: pass it back to reproduce the image.",
    )
    user_negative_prompt: str = Field("", description="The negative prompt as asked.")
    negative_prompt: str
    style: str
    style_strength: float
    style_sha256: str | None = Field(None, description="sha256 of the style's adapter file, to reproduce it.")
    aspect_ratio: str
    steps: int
    guidance: float
    format: ImageFormat
    model: str
    variant: str
    source_image_id: str | None = Field(None, description="The image this one started from, if any.")
    source_sha256: str | None = Field(
        None, description="sha256 of the source image's bytes, when it started from one."
    )
    strength: float | None = Field(None, description="How much the source image was changed, 0 to 1.")
    source_fit: str | None = Field(
        None, description="How the source was scaled and cropped to this image's size."
    )
    batched: bool = Field(
        False,
        description="Rendered in one batch with other images of its request. On a GPU such an image can "
        "differ slightly from the one its seed gives alone (up to 61/255 per pixel measured).",
    )
    progress: float = Field(0.0, description="Fraction done, 0 to 1.")
    error: str | None = Field(None, description="Why the image failed, when status is failed.")
    url: str | None = Field(None, description="A direct download link, where the store offers one.")


class GenerateImageResult(BaseModel):
    images: list[ImageInfo]
    message: str = Field(description="What happened and what to do next.")


class StyleInfo(BaseModel):
    name: str = Field(description="Pass this as generate_image's style.")
    title: str
    description: str
    trigger_words: list[str] = Field(default_factory=list)
    strength: float = Field(description="Default style_strength.")
    aspect_ratio: str | None = None
    steps: int | None = None
    guidance: float | None = None
    preview: str | None = Field(None, description="Link to a preview image, if the style has one.")


class ListStylesResult(BaseModel):
    styles: list[StyleInfo]


class GetImageResult(BaseModel):
    image: ImageInfo
    progress_percent: float = Field(description="0 to 100.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left, while queued or running.")
    queue_position: int | None = Field(None, description="Jobs ahead of this one, while queued.")
    inline: str | None = Field(
        None, description="What the attached image content is: `full`, or the reduced copy sent instead."
    )
    message: str
