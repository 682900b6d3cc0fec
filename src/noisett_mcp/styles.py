"""Brand styles: one TOML manifest per style in a local folder, each naming a LoRA adapter.

The catalog is torch-free: the MCP server lists styles before the model loads. It re-reads the folder
on every `refresh()`, cheaply: a manifest is parsed again and a weights file hashed again only when its
modification time, size or inode changed. The engine (engine/styles.py) loads the adapters; when it
refuses one (its keys match nothing in the loaded transformer), it reports back with `refuse()`, and
the catalog stops offering that style until its weights change.

The folder is a plain local folder on purpose: a deployment that keeps styles in Blob storage syncs
them into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from noisett_mcp.config import BLOB_MODEL_SCHEME, Settings
from noisett_mcp.models import AspectRatio, StyleInfo

log = logging.getLogger(__name__)

BASE_STYLE = "none"  # the base model, LoRA disabled
MANIFEST_SUFFIX = ".toml"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
PREVIEW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_STRENGTH = 2.0
# The tiny adapters for NOISETT_MODEL=demo ship inside the package, so the quickstart works from the wheel.
DEMO_STYLES_DIR = Path(__file__).parent / "demo_styles"

_SLUG = r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Where a LoRA tensor name ends and its module path begins: `<module>.lora_A.weight`, `<module>.alpha`…
_LORA_PARTS = re.compile(r"\.(?:lora_(?:A|B|down|up|magnitude_vector)|alpha|dora_scale)(?:\.|$)")


class StyleRefused(Exception):
    """A style that cannot be offered; the message names its manifest and says what to fix."""

    def __init__(self, source: Path, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class StyleUnavailable(Exception):
    """A style that exists but cannot be used right now (a hub download failed); not its fault."""


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
    def preview_file(self) -> Path | None:
        preview = self.manifest.preview
        if preview is None or preview.startswith("https://"):
            return None
        return self.source.parent / preview

    def info(self) -> StyleInfo:
        m = self.manifest
        preview = m.preview
        if self.preview_file is not None:
            preview = preview_uri(m.name) if self.preview_file.is_file() else None
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


@dataclass(frozen=True)
class Refusal:
    source: Path
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A valid style made for other models: not offered, not an error."""

    source: Path
    name: str
    base_models: tuple[str, ...]


@dataclass(frozen=True)
class CatalogView:
    """One scan of the styles folder."""

    styles: dict[str, Style]  # offered, by name
    refused: list[Refusal] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def names(self) -> list[str]:
        return [BASE_STYLE, *self.styles]

    def resolve(self, name: str) -> Style | None:
        """The style for a request (None for the base style); raise LookupError saying what is available."""
        if name == BASE_STYLE:
            return None
        style = self.styles.get(name)
        if style is not None:
            return style
        available = ", ".join(self.names())
        for refusal in self.refused:
            if refusal.source.stem == name:
                raise LookupError(
                    f"style {name!r} is refused ({refusal.reason}); available styles: {available}"
                )
        for skipped in self.skipped:
            if skipped.name == name:
                raise LookupError(
                    f"style {name!r} is made for {', '.join(skipped.base_models)}, not this model; "
                    f"available styles: {available}"
                )
        raise LookupError(f"unknown style {name!r}; available styles: {available}")


StatKey = tuple[int, int, int]


def _stat_key(path: Path) -> StatKey:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


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


class StyleCatalog:
    """The styles offered for one model, re-read from the folder on each `refresh()`. Thread-safe."""

    def __init__(self, settings: Settings, folder: Path | None = None) -> None:
        """The styles folder of `settings`, plus the built-in demo styles for the demo model; or exactly
        `folder` when it is given."""
        self.model = settings.model
        self.cache_dir = settings.resolved_model_cache_dir
        self.folders = [folder or settings.resolved_styles_dir]
        if folder is None and settings.is_demo:
            self.folders.append(DEMO_STYLES_DIR)  # after the styles folder: its styles win a name clash
        self._lock = threading.Lock()
        self._manifests: dict[Path, tuple[StatKey, StyleManifest | str]] = {}
        self._weights: dict[Path, tuple[StatKey, tuple[str, frozenset[str]] | str]] = {}
        self._engine_refusals: dict[tuple[str, str | None], str] = {}  # (name, sha256) → reason
        self._reported: dict[Path, str] = {}  # what was last logged per manifest, to log changes only

    def refresh(self) -> CatalogView:
        with self._lock:
            styles: dict[str, Style] = {}
            refused: list[Refusal] = []
            skipped: list[Skipped] = []
            seen: set[Path] = set()
            for folder in self.folders:
                for path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")) if folder.is_dir() else []:
                    seen.add(path)
                    try:
                        style = self._load(path)
                    except StyleRefused as exc:
                        refused.append(Refusal(path, exc.reason))
                        continue
                    except OSError as exc:  # unreadable, or removed mid-scan (a sync at work)
                        refused.append(Refusal(path, f"cannot read it ({exc})"))
                        continue
                    if style.name in styles:  # a styles-folder style shadows a built-in demo one
                        continue
                    if not matches_model(style.manifest.base_models, self.model):
                        skipped.append(Skipped(path, style.name, tuple(style.manifest.base_models)))
                        continue
                    reason = self._engine_refusals.get((style.name, style.sha256))
                    if reason is not None:
                        refused.append(Refusal(path, reason))
                        continue
                    styles[style.name] = style
            # Forget files that are gone, so the caches never outgrow the folder.
            for gone in [p for p in self._manifests if p not in seen]:
                del self._manifests[gone]
            for gone in [p for p in self._weights if not p.is_file()]:
                del self._weights[gone]
            view = CatalogView(styles, refused, skipped)
            self._log_changes(view, seen)
            return view

    def refuse(self, style: Style, reason: str) -> None:
        """Stop offering `style` until its weights change (the engine could not use them)."""
        with self._lock:
            self._engine_refusals[(style.name, style.sha256)] = reason

    def fetch(self, style: Style) -> Style:
        """The style with its weights file on disk and hashed: downloads hub weights once (into the model
        cache). Call it off the event loop."""
        if style.weights_file is not None:
            return style
        from huggingface_hub import hf_hub_download

        m = style.manifest
        assert m.weight_name is not None
        try:
            path = Path(
                hf_hub_download(m.weights, m.weight_name, revision=m.revision, cache_dir=str(self.cache_dir))
            )
        except Exception as exc:
            raise StyleUnavailable(
                f"style {style.name!r}: could not download {m.weight_name} from {m.weights} ({exc})"
            ) from exc
        with self._lock:
            sha256, modules = self._check_weights(style.source, path)
        return dataclasses.replace(style, weights_file=path, sha256=sha256, modules=modules)

    # --- internals (called with the lock held) ---
    def _load(self, path: Path) -> Style:
        m = self._manifest(path)
        weights_file: Path | None
        if m.is_hub:
            assert m.weight_name is not None
            weights_file = _hub_cached(m.weights, m.weight_name, m.revision, self.cache_dir)
        else:
            weights_file = path.parent / m.weights
            if not weights_file.is_file():
                raise StyleRefused(path, f"weights file {m.weights!r} not found next to the manifest")
        sha256, modules = self._check_weights(path, weights_file) if weights_file else (None, frozenset())
        warnings = []
        template = m.prompt_template.lower()
        missing = [word for word in m.trigger_words if word.lower() not in template]
        if missing:
            warnings.append(f"trigger words not in prompt_template: {', '.join(missing)}")
        style = Style(m, path, weights_file, sha256, modules)
        if style.preview_file is not None and not style.preview_file.is_file():
            warnings.append(f"preview {m.preview!r} not found; list_styles shows no preview")
        return dataclasses.replace(style, warnings=tuple(warnings))

    def _manifest(self, path: Path) -> StyleManifest:
        key = _stat_key(path)
        cached = self._manifests.get(path)
        if cached is None or cached[0] != key:
            cached = (key, _parse_manifest(path))
            self._manifests[path] = cached
        if isinstance(cached[1], str):
            raise StyleRefused(path, cached[1])
        return cached[1]

    def _check_weights(self, source: Path, weights: Path) -> tuple[str, frozenset[str]]:
        key = _stat_key(weights)
        cached = self._weights.get(weights)
        if cached is None or cached[0] != key:
            try:
                modules = read_adapter_modules(weights)
                result: tuple[str, frozenset[str]] | str = (sha256_file(weights), modules)
            except ValueError as exc:
                result = f"weights {weights.name!r}: {exc}"
            cached = (key, result)
            self._weights[weights] = cached
        if isinstance(cached[1], str):
            raise StyleRefused(source, cached[1])
        return cached[1]

    def _log_changes(self, view: CatalogView, seen: set[Path]) -> None:
        now = {r.source: f"refused: {r.reason}" for r in view.refused}
        now |= {s.source: f"offered (sha256 {s.sha256 or 'not fetched'})" for s in view.styles.values()}
        now |= {s.source: f"not for {self.model}" for s in view.skipped}
        for path, state in now.items():
            if self._reported.get(path) != state:
                level = logging.WARNING if state.startswith("refused") else logging.INFO
                log.log(level, "style %s: %s", path, state)
        for path in [p for p in self._reported if p not in seen]:
            log.info("style %s: removed", path)
        self._reported = now


def _parse_manifest(path: Path) -> StyleManifest | str:
    """The manifest, or the reason it is refused."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"malformed TOML ({exc})"
    try:
        manifest = StyleManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        return f"invalid manifest ({problems})"
    if manifest.name != path.stem:
        return f"name {manifest.name!r} must match the file name {path.stem!r}"
    return manifest


def _hub_cached(repo_id: str, filename: str, revision: str | None, cache_dir: Path) -> Path | None:
    """The hub file if it is already in the cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) else None


def model_modules(model: str, cache_dir: Path) -> frozenset[str]:
    """Module names of a model's transformer, from its weight names (no weights are loaded), for checking
    adapters from the shell. Reads a local folder, the hub cache, or the hub (the index file only)."""
    folder = Path(model)
    if model == "demo":
        from noisett_mcp.engine.demo import DEMO_VERSION, write_demo_model  # builds it once (torch)

        folder = write_demo_model(cache_dir / f"noisett-demo-v{DEMO_VERSION}")
    names = _weight_names(folder / "transformer") if folder.is_dir() else _hub_weight_names(model, cache_dir)
    modules = set()
    for name in names:
        parts = name.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(modules)


def _weight_names(transformer: Path) -> list[str]:
    index = transformer / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(str(transformer / "diffusion_pytorch_model.safetensors"), framework="numpy") as f:
        return list(f.keys())


def _hub_weight_names(model: str, cache_dir: Path) -> list[str]:
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(
        model, "transformer/diffusion_pytorch_model.safetensors.index.json", cache_dir=str(cache_dir)
    )
    return list(json.loads(Path(index).read_text())["weight_map"])


@dataclass(frozen=True)
class CheckResult:
    status: str  # ok, warning, refused or skipped
    source: Path
    detail: str


def check_folder(settings: Settings, folder: Path, keys: bool = True) -> list[CheckResult]:
    """Everything the server would say about each manifest in `folder`, for `noisett-mcp styles check`.
    With `keys`, adapters are also matched against the model's transformer (raise if its weight names
    cannot be read)."""
    catalog = StyleCatalog(settings, folder)
    view = catalog.refresh()
    modules = model_modules(settings.model, catalog.cache_dir) if keys and view.styles else None
    results = [CheckResult("refused", r.source, r.reason) for r in view.refused]
    results += [
        CheckResult("skipped", s.source, f"made for {', '.join(s.base_models)}, not {settings.model}")
        for s in view.skipped
    ]
    for style in view.styles.values():
        notes = list(style.warnings)
        try:
            style = catalog.fetch(style)
            if modules is not None:
                matched = check_modules(style, modules)
                if len(matched) < len(style.modules):
                    notes.append(
                        f"{len(style.modules) - len(matched)} of its {len(style.modules)} modules are not "
                        "in the model and would be ignored"
                    )
        except StyleRefused as exc:
            results.append(CheckResult("refused", style.source, exc.reason))
            continue
        except StyleUnavailable as exc:
            results.append(CheckResult("refused", style.source, str(exc)))
            continue
        assert style.sha256 is not None
        summary = f"{style.name!r}, sha256 {style.sha256[:16]}…, {len(style.modules)} modules"
        results.append(CheckResult("warning" if notes else "ok", style.source, "; ".join([summary, *notes])))
    return sorted(results, key=lambda r: r.source.name)
