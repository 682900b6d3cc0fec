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
from noisett_mcp.errors import StyleRefused, StyleUnavailable, UnsafeFile
from noisett_mcp.styles.files import (
    MAX_MANIFEST_BYTES,
    MAX_PREVIEW_BYTES,
    FileKey,
    read_capped,
    regular_file,
    sha256_regular,
)
from noisett_mcp.styles.keys import MAX_KEY_PARTS, longest_dotted_key
from noisett_mcp.styles.manifest import (
    BASE_STYLE,
    DEMO_STYLES_DIR,
    MANIFEST_SUFFIX,
    Style,
    StyleManifest,
    matches_model,
    read_adapter_modules,
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


class StyleCatalog:
    """The styles offered for one model, re-read from the folder on each `refresh()`. Thread-safe.

    The lock guards the caches only: files are read, parsed and hashed outside it, so one slow or hostile
    file never stalls the threads that list styles or start generations. Two refreshes that meet a new
    weights file hash it once (a per-file lock), not twice."""

    def __init__(self, settings: Settings, folder: Path | None = None) -> None:
        """The styles folder of `settings`, plus the built-in demo styles for the demo model; or exactly
        `folder` when it is given."""
        self.model = settings.model
        self.cache_dir = settings.resolved_model_cache_dir
        self.folders = [folder or settings.resolved_styles_dir]
        if folder is None and settings.is_demo:
            self.folders.append(DEMO_STYLES_DIR)  # after the styles folder: its styles win a name clash
        self._lock = threading.Lock()
        self._manifests: dict[Path, tuple[FileKey, StyleManifest | str]] = {}
        self._weights: dict[Path, tuple[FileKey, tuple[str, frozenset[str]] | str]] = {}
        self._hashing: dict[Path, threading.Lock] = {}  # one hash of a weights file at a time
        self._parsing: dict[Path, threading.Lock] = {}  # one parse of a manifest at a time
        self._engine_refusals: dict[tuple[str, str | None], str] = {}  # (name, sha256) → reason
        self._reported: dict[Path, str] = {}  # what was last logged per manifest, to log changes only

    def refresh(self) -> CatalogView:
        styles: dict[str, Style] = {}
        refused: list[Refusal] = []
        skipped: list[Skipped] = []
        seen: set[Path] = set()
        for folder in self.folders:
            for path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")) if folder.is_dir() else []:
                seen.add(path)
                try:
                    # The model first: a style for other models is skipped, whatever its weights.
                    manifest = self._manifest(path, folder)
                    if not matches_model(manifest.base_models, self.model):
                        skipped.append(Skipped(path, manifest.name, tuple(manifest.base_models)))
                        continue
                    style = self._load(path, folder)
                except StyleRefused as exc:
                    refused.append(Refusal(path, exc.reason))
                    continue
                except OSError as exc:  # unreadable, or removed mid-scan (a sync at work)
                    refused.append(Refusal(path, f"cannot read it ({exc.strerror or exc})"))
                    continue
                except Exception as exc:  # one bad file must never take down the others
                    log.debug("style %s", path, exc_info=True)
                    refused.append(Refusal(path, f"cannot read it ({type(exc).__name__})"))
                    continue
                if style.name in styles:  # a styles-folder style shadows a built-in demo one
                    continue
                with self._lock:
                    reason = self._engine_refusals.get((style.name, style.sha256))
                if reason is not None:
                    refused.append(Refusal(path, reason))
                    continue
                styles[style.name] = style
        with self._lock:
            cached_weights = list(self._weights.items())
        weights_in_use = {w for w, (key, _) in cached_weights if _still(w, key)}  # stat outside the lock
        view = CatalogView(styles, refused, skipped)
        with self._lock:
            # Forget files that are gone, so the caches never outgrow the folder.
            for gone in [p for p in self._manifests if p not in seen]:
                del self._manifests[gone]
                self._parsing.pop(gone, None)
            for gone in [p for p, _ in cached_weights if p not in weights_in_use]:
                self._weights.pop(gone, None)  # only entries this scan checked: a newer one may have come
                self._hashing.pop(gone, None)
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
        _, sha256, modules = self._check_weights(style.source, path, None)
        return dataclasses.replace(style, weights_file=path, sha256=sha256, modules=modules)

    # --- internals (called without the lock; they take it only to read or write a cache entry) ---
    def _load(self, path: Path, folder: Path) -> Style:
        m = self._manifest(path, folder)
        weights_file: Path | None
        sha256: str | None = None
        modules: frozenset[str] = frozenset()
        if m.is_hub:  # our own download into the model cache (hub caches are links into blobs/)
            assert m.weight_name is not None
            weights_file = _hub_cached(m.weights, m.weight_name, m.revision, self.cache_dir)
            if weights_file is not None:
                _, sha256, modules = self._check_weights(path, weights_file, None)
        else:  # the checked target itself, so that a link re-pointed later is not followed
            weights_file, sha256, modules = self._check_weights(path, path.parent / m.weights, folder)
        warnings = []
        template = m.prompt_template.lower()
        missing = [word for word in m.trigger_words if word.lower() not in template]
        if missing:
            warnings.append(f"trigger words not in prompt_template: {', '.join(missing)}")
        style = Style(m, path, weights_file, sha256, modules)
        preview, problem = _checked_preview(style.preview_named, folder)
        if problem:
            warnings.append(f"preview {m.preview!r} {problem}; list_styles shows no preview")
        return dataclasses.replace(style, warnings=tuple(warnings), preview_file=preview)

    def _manifest(self, path: Path, folder: Path) -> StyleManifest:
        try:
            real, key = regular_file(path, folder)
        except UnsafeFile as exc:
            raise StyleRefused(path, f"manifest refused: {exc}") from None
        with self._lock:
            parsing = self._parsing.setdefault(path, threading.Lock())
        with parsing:  # single flight: concurrent misses on one file version parse it once
            with self._lock:
                cached = self._manifests.get(path)
            if cached is None or cached[0] != key:
                try:
                    parsed = _parse_manifest(path, read_capped(real, MAX_MANIFEST_BYTES, "manifest"))
                except UnsafeFile as exc:
                    parsed = f"manifest refused: {exc}"
                cached = (key, parsed)
                with self._lock:
                    self._manifests[path] = cached
        if isinstance(cached[1], str):
            raise StyleRefused(path, cached[1])
        return cached[1]

    def _check_weights(
        self, source: Path, weights: Path, root: Path | None
    ) -> tuple[Path, str, frozenset[str]]:
        """The weights file's real path, SHA-256 and adapted modules; raise StyleRefused saying why not.
        With `root`, the file must resolve inside it."""
        try:
            real, key = regular_file(weights, root)
        except FileNotFoundError:
            named = weights.relative_to(source.parent) if root is not None else weights
            reason = f"weights file {named.as_posix()!r} not found next to the manifest"
            raise StyleRefused(source, reason) from None
        except UnsafeFile as exc:
            raise StyleRefused(source, f"weights {weights.name!r} refused: {exc}") from None
        with self._lock:
            hashing = self._hashing.setdefault(weights, threading.Lock())
        with hashing:  # only refreshes that need this very file wait here, never the catalog
            with self._lock:
                cached = self._weights.get(weights)
            if cached is None or cached[0] != key:
                try:
                    modules = read_adapter_modules(real)
                    result: tuple[str, frozenset[str]] | str = (sha256_regular(real), modules)
                except ValueError as exc:
                    result = f"weights {weights.name!r}: {exc}"
                except UnsafeFile as exc:
                    result = f"weights {weights.name!r} refused: {exc}"
                cached = (key, result)
                with self._lock:
                    self._weights[weights] = cached
        if isinstance(cached[1], str):
            raise StyleRefused(source, cached[1])
        return (real, *cached[1])

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


def _still(path: Path, key: FileKey) -> bool:
    """The cached file is still there as it was (hub weights outlive the scan that found them)."""
    try:
        return regular_file(path, None)[1] == key
    except (OSError, UnsafeFile):
        return False


def _checked_preview(named: Path | None, folder: Path) -> tuple[Path | None, str | None]:
    """The preview file to serve, or why there is none."""
    if named is None:
        return None, None
    try:
        real, key = regular_file(named, folder)
    except FileNotFoundError:
        return None, "not found"
    except UnsafeFile as exc:
        return None, f"refused: {exc}"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if key[2] > MAX_PREVIEW_BYTES:
        return None, f"is larger than {MAX_PREVIEW_BYTES // (1024 * 1024)} MiB, the most a preview may be"
    return real, None


def _parse_manifest(path: Path, raw: bytes) -> StyleManifest | str:
    """The manifest, or the reason it is refused."""
    try:
        text = raw.decode("utf-8")
        if (parts := longest_dotted_key(text)) > MAX_KEY_PARTS:
            return (
                f"{path.name}: a key has {parts} dotted parts; the most a manifest key may have is "
                f"{MAX_KEY_PARTS} (its keys are flat, like `title`)"
            )
        data: dict[str, Any] = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"malformed TOML ({exc})"
    except RecursionError:  # tomllib recurses once per nesting level: `x = [[[…]]]`
        return "malformed TOML (nested too deeply: a manifest needs at most a few levels)"
    try:
        manifest = StyleManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        return f"invalid manifest ({problems})"
    except RecursionError:
        return "invalid manifest (nested too deeply)"
    if manifest.name != path.stem:
        return f"name {manifest.name!r} must match the file name {path.stem!r}"
    return manifest


def _hub_cached(repo_id: str, filename: str, revision: str | None, cache_dir: Path) -> Path | None:
    """The hub file if it is already in the cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) else None
