"""From a request to the spec its job renders: the style applied and every default filled in. Pure:
the front resolves the style and the source (storage, the catalog) and hands them here."""

from __future__ import annotations

import random

from noisett_mcp import sources
from noisett_mcp.config import Settings
from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import (
    DEFAULT_STRENGTH,
    MAX_SEED,
    VARIANT_DEFAULTS,
    GenerationRequest,
    GenerationSpec,
    rendered_size,
)
from noisett_mcp.sources import Source
from noisett_mcp.styles.manifest import MAX_STRENGTH, Style


def resolve_spec(
    request: GenerationRequest,
    settings: Settings,
    chosen: Style | None,
    geometry: tuple[int, int],
    source: Source | None = None,
) -> GenerationSpec:
    """`chosen` is the request's style (None for none); `geometry` the (side, multiple) rendered; the
    `source`, if given now, is the same as `with_source` later."""
    default_steps, default_guidance = VARIANT_DEFAULTS[settings.resolved_variant]
    steps, guidance = request.steps, request.guidance
    prompt, negative = request.prompt, request.negative_prompt
    strength = 0.0
    if chosen is not None:
        strength = style_strength(chosen, request.style_strength)
        prompt, negative = chosen.prompt(prompt), chosen.negative_prompt(negative)
        steps = steps or chosen.manifest.steps
        guidance = chosen.manifest.guidance if guidance is None else guidance
    first_seed = random.randrange(MAX_SEED + 1) if request.seed is None else request.seed
    width, height = rendered_size(request.aspect_ratio, *geometry)
    spec = GenerationSpec(
        prompt=prompt,
        negative_prompt=negative,
        user_prompt=request.prompt,
        user_negative_prompt=request.negative_prompt,
        style=request.style,
        style_strength=strength,
        style_sha256=chosen.sha256 if chosen else None,
        aspect_ratio=request.aspect_ratio,
        width=width,
        height=height,
        steps=steps or default_steps,
        guidance=default_guidance if guidance is None else guidance,
        seeds=[(first_seed + i) % (MAX_SEED + 1) for i in range(request.count)],
        format=request.format,
        model=settings.model,
        variant=settings.resolved_variant,
    )
    return with_source(spec, request, source) if source is not None else spec


def with_source(spec: GenerationSpec, request: GenerationRequest, source: Source) -> GenerationSpec:
    """The spec of an image-to-image request, once its source is checked (the seeds stay drawn)."""
    return spec.model_copy(
        update={
            "source_image_id": source.image_id,
            "source_sha256": source.sha256,
            "strength": DEFAULT_STRENGTH if request.strength is None else request.strength,
            "source_fit": sources.describe_fit(source, spec.width, spec.height),
        }
    )


def style_strength(style: Style, asked: float | None) -> float:
    strength = style.manifest.strength if asked is None else asked
    if not 0 <= strength <= MAX_STRENGTH:
        raise RequestError(f"style_strength must be from 0 to {MAX_STRENGTH:g}, not {strength:g}")
    return strength
