"""Brand style manifests: one TOML file per style, naming a LoRA adapter and what it is for.

Torch-free: the MCP server lists styles before the model loads. `Style` is a valid manifest with its
adapter file, and the helpers here read an adapter's keys from its safetensors header alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from noisett_mcp.config import BLOB_MODEL_SCHEME
from noisett_mcp.errors import StyleRefused
from noisett_mcp.schemas import AspectRatio, StyleInfo

BASE_STYLE = "none"  # the base model, LoRA disabled
MANIFEST_SUFFIX = ".toml"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
PREVIEW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_STRENGTH = 2.0
# The tiny adapters for NOISETT_MODEL=demo ship inside the package, so the quickstart works from the wheel.
DEMO_STYLES_DIR = Path(__file__).parent.parent / "demo_styles"

_SLUG = r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$"
SLUG_PATTERN = re.compile(_SLUG)  # a style's name: also checked by `styles train` before it starts
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Where a LoRA tensor name ends and its module path begins: `<module>.lora_A.weight`, `<module>.alpha`…
_LORA_PARTS = re.compile(r"\.(?:lora_(?:A|B|down|up|magnitude_vector)|alpha|dora_scale)(?:\.|$)")


class TrainingRecord(BaseModel):
    """How `noisett-mcp styles train` made the adapter: the `[training]` table of its manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str = Field(min_length=1, description="The model the adapter was trained on.")
    variant: Literal["full", "dev", "fast"] = Field(description="The HiDream-I1 variant trained on.")
    rank: int = Field(ge=1, le=512)
    steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    resolution: int = Field(ge=8, description="The side of the square size the pictures were bucketed to.")
    seed: int = Field(ge=0)
    images: int = Field(ge=1, description="How many training pictures.")
    image_sha256: list[str] = Field(description="The sha256 of each training picture, sorted.")


class StyleManifest(BaseModel):
    """The TOML manifest of one style (documented in loras/README.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_SLUG, description="Slug; the manifest's file name without .toml.")
    title: str = Field(min_length=1, max_length=80)
    description: str = Field(
        min_length=1, max_length=1000, description="Written for an LLM choosing a style."
    )
    weights: str = Field(
        min_length=1, description="A .safetensors file relative to the manifest, or a hub repo id."
    )
    weight_name: str | None = Field(None, description="The file in the hub repo; makes `weights` a repo id.")
    revision: str | None = Field(None, description="Hub revision (a commit hash pins it).")
    base_models: list[str] = Field(
        min_length=1, description="Model ids or shell patterns it was trained for."
    )
    strength: float = Field(1.0, ge=0, le=MAX_STRENGTH, description="Default LoRA scale.")
    trigger_words: list[str] = Field(default_factory=list)
    prompt_template: str = Field("{prompt}", description="Must contain {prompt} once.")
    negative_prompt: str = Field("", description="Added to the caller's negative prompt.")
    aspect_ratio: AspectRatio | None = None
    steps: int | None = Field(None, ge=1, le=100)
    guidance: float | None = Field(None, ge=0, le=20)
    preview: str | None = Field(None, description="An image next to the manifest, or an https URL.")
    training: TrainingRecord | None = Field(None, description="Written by `styles train`.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == BASE_STYLE:
            raise ValueError(f"{BASE_STYLE!r} is reserved for the base model")
        return name

    @field_validator("prompt_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        if template.count("{prompt}") != 1:
            raise ValueError("must contain {prompt} exactly once, where the caller's prompt goes")
        return template

    @model_validator(mode="after")
    def _weights_shape(self) -> StyleManifest:
        if self.weight_name is not None:  # a hub repo
            if not _REPO_ID.fullmatch(self.weights):
                raise ValueError(
                    f"with weight_name, weights must be a hub repo id like 'owner/name', not {self.weights!r}"
                )
            _check_weights_suffix(self.weight_name)
        else:
            if self.revision is not None:
                raise ValueError("revision only applies to hub weights (set weight_name too)")
            _check_weights_suffix(self.weights)
            _check_relative(self.weights, "weights")
        if self.preview is not None and not self.preview.startswith("https://"):
            _check_relative(self.preview, "preview")
            if PurePosixPath(self.preview).suffix.lower() not in PREVIEW_SUFFIXES:
                raise ValueError("preview must be a .png, .jpg or .webp file, or an https:// URL")
        return self

    @property
    def is_hub(self) -> bool:
        return self.weight_name is not None


def _check_weights_suffix(name: str) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{name!r} is a pickle file, which can run code when loaded; only .safetensors weights are "
            "accepted (convert it with safetensors.torch.save_file)"
        )
    if suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file, not {name!r}")


def _check_relative(value: str, what: str) -> None:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(
            f"{what} must be a path inside the styles folder, relative to the manifest: {value!r}"
        )


@dataclass(frozen=True)
class Style:
    """A valid style: its manifest, and its adapter file once known (hub weights: after download)."""

    manifest: StyleManifest
    source: Path  # the manifest file
    weights_file: Path | None
    sha256: str | None
    modules: frozenset[str]  # transformer modules the adapter's keys name
    warnings: tuple[str, ...] = ()
    # The preview image once the catalog has checked it (a regular file inside the folder, not too big).
    preview_file: Path | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    def prompt(self, prompt: str) -> str:
        # str.replace, not str.format: braces in the caller's prompt stay as typed.
        return self.manifest.prompt_template.replace("{prompt}", prompt.strip())

    def negative_prompt(self, negative_prompt: str) -> str:
        return ", ".join(
            part for part in (negative_prompt.strip(), self.manifest.negative_prompt.strip()) if part
        )

    @property
    def preview_named(self) -> Path | None:
        """The local preview file the manifest names, not yet checked (None for none or a URL)."""
        preview = self.manifest.preview
        if preview is None or preview.startswith("https://"):
            return None
        return self.source.parent / preview

    def info(self) -> StyleInfo:
        m = self.manifest
        preview = m.preview
        if self.preview_named is not None:
            preview = preview_uri(m.name) if self.preview_file is not None else None
        return StyleInfo(
            name=m.name,
            title=m.title,
            description=m.description.strip(),
            trigger_words=m.trigger_words,
            strength=m.strength,
            aspect_ratio=m.aspect_ratio,
            steps=m.steps,
            guidance=m.guidance,
            preview=preview,
        )


def preview_uri(name: str) -> str:
    return f"style://{name}/preview"


def matches_model(patterns: Iterable[str], model: str) -> bool:
    """True if a `base_models` entry names the model: an exact id or a shell pattern (case-insensitive,
    like hub ids). A local model folder (or a `blob://` prefix) also matches by its last name, so a style
    for `HiDream-ai/HiDream-I1-*` fits a copy of the repo in `/models/HiDream-I1-Fast`."""
    model_l = model.lower()
    local = ("/" in model or "\\" in model) and Path(model).is_dir()
    folder = Path(model).name.lower() if local or model_l.startswith(BLOB_MODEL_SCHEME) else None
    for pattern in patterns:
        p = pattern.lower()
        if fnmatchcase(model_l, p) or (folder and fnmatchcase(folder, p.rsplit("/", 1)[-1])):
            return True
    return False


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def adapter_modules(keys: Iterable[str]) -> frozenset[str]:
    """The transformer modules that LoRA tensor names refer to. Follows diffusers' HiDream loader: the
    ComfyUI/kohya prefix `diffusion_model.` means `transformer.`; keys for anything else are ignored."""
    modules = set()
    for key in keys:
        if key.startswith("diffusion_model."):
            key = "transformer." + key.removeprefix("diffusion_model.")
        if not key.startswith("transformer."):
            continue
        match = _LORA_PARTS.search(key)
        if match:
            modules.add(key[len("transformer.") : match.start()])
    return frozenset(modules)


def read_adapter_modules(path: Path) -> frozenset[str]:
    """The transformer modules a safetensors LoRA file adapts, from its header alone; raise ValueError
    for a file diffusers would refuse, or load without touching the transformer."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"not a readable safetensors file ({exc})") from exc
    if not keys:
        raise ValueError("the safetensors file holds no tensors")
    odd = [key for key in keys if "lora" not in key]  # diffusers' own test of a LoRA checkpoint
    if odd:
        raise ValueError(f"not a LoRA adapter: tensor {odd[0]!r} is not a LoRA weight")
    modules = adapter_modules(keys)
    if not modules:
        raise ValueError(
            f"no key is for the transformer (keys look like {keys[0]!r}; HiDream adapters use "
            "'transformer.' or 'diffusion_model.'), so it would change nothing"
        )
    return modules


def check_modules(style: Style, model_modules: frozenset[str]) -> frozenset[str]:
    """The adapter modules the model has; raise StyleRefused if there are none (diffusers would load such
    an adapter silently and change nothing)."""
    matched = style.modules & model_modules
    if not matched:
        example = min(style.modules, default="")
        raise StyleRefused(
            style.source,
            f"the adapter's keys match no module of the model's transformer (e.g. {example!r}): it was made "
            "for another model, or saved in a key format diffusers does not read",
        )
    return matched
