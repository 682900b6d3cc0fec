"""`noisett-mcp styles check`: everything the server would say about each manifest in a folder, plus
whether each adapter's keys match the model's transformer (read from its weight names, no weights loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from noisett_mcp.config import Settings
from noisett_mcp.errors import StyleRefused, StyleUnavailable
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import check_modules


def model_modules(model: str, cache_dir: Path) -> frozenset[str]:
    """Module names of a model's transformer, from its weight names (no weights are loaded), for checking
    adapters from the shell. Reads a local folder, the hub cache, or the hub (the index file only)."""
    folder = Path(model)
    names = _weight_names(folder / "transformer") if folder.is_dir() else _hub_weight_names(model, cache_dir)
    modules: set[str] = set()
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


def check_folder(
    settings: Settings, folder: Path, keys: bool = True, model_folder: Path | None = None
) -> list[CheckResult]:
    """Everything the server would say about each manifest in `folder`, for `noisett-mcp styles check`.
    With `keys`, adapters are also matched against the model's transformer, read from `model_folder` if
    given, else from NOISETT_MODEL (raise if its weight names cannot be read)."""
    catalog = StyleCatalog(settings, folder)
    view = catalog.refresh()
    model = str(model_folder) if model_folder is not None else settings.model
    modules = model_modules(model, catalog.cache_dir) if keys and view.styles else None
    results = [CheckResult("refused", r.source, r.reason) for r in view.refused]
    results += [
        CheckResult(
            "skipped", s.source, f"for other models ({', '.join(s.base_models)}), not {settings.model}"
        )
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
