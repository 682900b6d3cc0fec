"""resolve_spec: a request becomes the spec its job renders, with the style applied and every default
filled in, and nothing the caller did not ask for changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import (
    DEFAULT_STRENGTH,
    MAX_SEED,
    VARIANT_DEFAULTS,
    GenerationRequest,
    default_geometry,
    rendered_size,
)
from noisett_mcp.sources import Source
from noisett_mcp.specs import resolve_spec, style_strength
from noisett_mcp.styles.manifest import MAX_STRENGTH, Style, StyleManifest

GEOMETRY = (1024, 16)


def settings(tmp_path: Path, model: str = "HiDream-ai/HiDream-I1-Dev") -> Settings:
    return Settings(model=model, data_dir=tmp_path)


def style(**manifest: object) -> Style:
    fields: dict[str, object] = {
        "name": "ink",
        "title": "Ink",
        "description": "Black ink line art.",
        "weights": "ink.safetensors",
        "base_models": ["HiDream-ai/*"],
        "prompt_template": "ink drawing of {prompt}, fine lines",
        "negative_prompt": "colour",
    }
    return Style(
        manifest=StyleManifest.model_validate(fields | manifest),
        source=Path("ink.toml"),
        weights_file=None,
        sha256="ab" * 32,
        modules=frozenset(),
    )


def test_a_plain_request_gets_its_variants_defaults_and_the_rendered_size(tmp_path: Path) -> None:
    request = GenerationRequest(prompt="a lighthouse", aspect_ratio="16:9", seed=7, count=3)
    spec = resolve_spec(request, settings(tmp_path), None, GEOMETRY)
    steps, guidance = VARIANT_DEFAULTS["dev"]
    assert (spec.steps, spec.guidance, spec.variant) == (steps, guidance, "dev")
    assert (spec.width, spec.height) == rendered_size("16:9", *GEOMETRY)
    assert spec.seeds == [7, 8, 9]
    assert spec.prompt == spec.user_prompt == "a lighthouse"
    assert spec.style == "none" and spec.style_strength == 0.0 and spec.style_sha256 is None
    assert spec.source_sha256 is None and spec.strength is None and spec.source_fit is None


def test_seeds_wrap_around_past_the_largest_seed(tmp_path: Path) -> None:
    request = GenerationRequest(prompt="p", seed=MAX_SEED, count=2)
    assert resolve_spec(request, settings(tmp_path), None, GEOMETRY).seeds == [MAX_SEED, 0]


def test_a_request_without_a_seed_draws_one_in_range(tmp_path: Path) -> None:
    spec = resolve_spec(GenerationRequest(prompt="p"), settings(tmp_path), None, GEOMETRY)
    assert 0 <= spec.seeds[0] <= MAX_SEED


def test_a_style_wraps_the_prompts_and_supplies_what_the_caller_left_out(tmp_path: Path) -> None:
    chosen = style(steps=20, guidance=3.5, strength=0.8)
    request = GenerationRequest(prompt=" a fox ", negative_prompt="blur", style="ink", seed=1)
    spec = resolve_spec(request, settings(tmp_path), chosen, GEOMETRY)
    assert spec.prompt == "ink drawing of a fox, fine lines"
    assert spec.negative_prompt == "blur, colour"
    assert spec.user_prompt == " a fox " and spec.user_negative_prompt == "blur"
    assert (spec.steps, spec.guidance, spec.style_strength) == (20, 3.5, 0.8)
    assert spec.style == "ink" and spec.style_sha256 == "ab" * 32


def test_what_the_caller_asked_wins_over_the_style(tmp_path: Path) -> None:
    chosen = style(steps=20, guidance=3.5, strength=0.8)
    request = GenerationRequest(prompt="a fox", style="ink", steps=4, guidance=0.0, style_strength=1.5)
    spec = resolve_spec(request, settings(tmp_path), chosen, GEOMETRY)
    assert (spec.steps, spec.guidance, spec.style_strength) == (4, 0.0, 1.5)


def test_a_style_strength_out_of_range_is_refused_with_what_is_allowed() -> None:
    with pytest.raises(RequestError, match=f"from 0 to {MAX_STRENGTH:g}, not 2.5"):
        style_strength(style(), 2.5)


def test_a_source_image_gets_the_default_strength_and_a_described_fit(tmp_path: Path) -> None:
    source = Source(data=b"png", sha256="cd" * 32, width=2048, height=1024, image_id="e" * 32)
    request = GenerationRequest(prompt="p", seed=1)
    spec = resolve_spec(request, settings(tmp_path), None, GEOMETRY, source)
    assert spec.strength == DEFAULT_STRENGTH
    assert spec.source_sha256 == "cd" * 32 and spec.source_image_id == "e" * 32
    assert spec.source_fit is not None and spec.source_fit.startswith("source 2048×1024 scaled to")
    given = resolve_spec(
        request.model_copy(update={"strength": 0.3}), settings(tmp_path), None, GEOMETRY, source
    )
    assert given.strength == 0.3


def test_the_geometry_before_the_model_loads_is_the_demo_models_or_hidreams(tmp_path: Path) -> None:
    assert default_geometry(settings(tmp_path, "demo")) == (64, 2)
    assert default_geometry(settings(tmp_path)) == (1024, 16)
