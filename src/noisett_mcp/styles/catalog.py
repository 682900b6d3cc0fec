"""The style catalog: the styles offered for one model, re-read from the styles folder.

It re-reads the folder on every `refresh()`, cheaply: a manifest is parsed again and a weights file
hashed again only when its modification time, size or inode changed. The engine (engine/adapters.py)
loads the adapters; when it refuses one (its keys match nothing in the loaded transformer), it reports
back with `refuse()`, and the catalog stops offering that style until its weights change.

The folder is a plain local folder on purpose: a deployment that keeps styles in Blob storage syncs
them into it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from noisett_mcp.config import Settings
from noisett_mcp.errors import StyleRefused, StyleUnavailable
from noisett_mcp.styles.manifest import (
    BASE_STYLE,
    DEMO_STYLES_DIR,
    MANIFEST_SUFFIX,
    Style,
    StyleManifest,
    matches_model,
    read_adapter_modules,
    sha256_file,
)

log = logging.getLogger(__name__)


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
