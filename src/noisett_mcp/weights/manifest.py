"""The manifest of a prepared model (`noisett-mcp model prepare`): where it came from, its variant, its
quantization and the library versions that wrote it. Torch-free: the engine checks it against the
settings before it reads a byte of weights, and refuses a model that does not fit them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from noisett_mcp.errors import ModelUnavailable

log = logging.getLogger(__name__)

MANIFEST = "noisett-model.json"
FORMAT = 1


def manifest(source: str, variant: str, quantization: str, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "source": source,
        "variant": variant,
        "quantization": quantization,
        "versions": versions,
    }


def check_manifest(
    text: str | bytes, *, quantize: str, variant: str, model: str, where: str, versions: dict[str, str]
) -> None:
    """Refuse a prepared model whose quantization or variant differs from the settings (`quantize`,
    `variant`: NOISETT_QUANTIZE and NOISETT_VARIANT, for `model`); warn when it was written by other
    library versions (they can still read it)."""
    wanted_variant = variant
    try:
        prepared = json.loads(text)
        quantization, prepared_variant = prepared["quantization"], prepared["variant"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailable(
            f"{where} is not a readable manifest ({exc}): prepare the model again"
        ) from exc
    if quantization != quantize:
        raise ModelUnavailable(
            f"{model} was prepared with quantization {quantization!r}, but NOISETT_QUANTIZE="
            f"{quantize}: set NOISETT_QUANTIZE={quantization}, or prepare the model again with "
            f"`noisett-mcp model prepare SRC {model}{_flag(quantize)}`"
        )
    if wanted_variant != "auto" and prepared_variant != wanted_variant:
        raise ModelUnavailable(
            f"{model} holds HiDream-I1-{prepared_variant.title()} (its manifest says so), but "
            f"NOISETT_VARIANT={wanted_variant}: set NOISETT_VARIANT={prepared_variant} or auto"
        )
    for library, version in prepared.get("versions", {}).items():
        if library in versions and versions[library] != version:
            log.warning(
                "%s was prepared with %s %s; this process runs %s", where, library, version, versions[library]
            )


def _flag(quantize: str) -> str:
    return "" if quantize == "none" else f" --quantize {quantize}"
