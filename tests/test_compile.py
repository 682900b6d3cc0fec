"""NOISETT_COMPILE=on compiles each transformer block whole (fullgraph, the router sync-free) during the
load's warm-up, so that no preset and no style switch compiles on a user's image; and the compiled engine
renders the eager engine's image, styled or not. On the demo model in float32 on the CPU: slow
(inductor's C++ compiles, about a minute on a 2-core machine), so marked slow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch._dynamo.utils import counters

from noisett_mcp.config import Settings
from noisett_mcp.engine.adapters import SLOT_RANK
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.demo_loras import demo_transformer, write_random_lora
from noisett_mcp.engine.fast import compile_wanted
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.schemas import ASPECT_RATIOS, GenerationSpec, rendered_size
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import Style


def spec(ratio: str, guidance: float, style: Style | None = None, strength: float = 1.0) -> GenerationSpec:
    width, height = rendered_size(ratio, 64, 2)
    return GenerationSpec(
        style=style.name if style else "none",
        style_sha256=style.sha256 if style else None,
        style_strength=strength if style else 0.0,
        prompt="a lighthouse at dusk",
        width=width,
        height=height,
        steps=2,
        guidance=guidance,
        seeds=[5],
        model="demo",
        variant="full",
    )


def test_compile_is_on_for_cuda_and_off_for_the_cpu_by_default_and_fp8_always_compiles(
    make_settings: Callable[..., Settings],
) -> None:
    def config(**overrides: Any) -> EngineConfig:
        return EngineConfig.from_settings(make_settings(**overrides))

    assert compile_wanted(config(), "cuda") and compile_wanted(config(), "cuda:1")
    assert not compile_wanted(config(), "cpu")
    assert compile_wanted(config(compile="on"), "cpu")
    assert not compile_wanted(config(compile="off"), "cuda")
    assert compile_wanted(config(compile="off", quantize="fp8"), "cuda")


@pytest.mark.slow
def test_after_the_load_s_warm_up_no_preset_or_style_compiles_and_the_image_is_the_eager_one(
    make_settings: Callable[..., Settings], model_cache: Path, tmp_path: Path
) -> None:
    settings = make_settings(compile="on", compile_cache_dir=tmp_path / "inductor")
    # A style of a rank above the slot's: it runs as its own adapter, and compiles on its first image.
    folder = settings.resolved_styles_dir
    transformer = demo_transformer(model_cache)
    write_random_lora(transformer, folder / "wide.safetensors", seed=7, rank=SLOT_RANK + 1)
    manifest = 'name = "wide"\ntitle = "Wide"\ndescription = "A rank above the slot"\n'
    (folder / "wide.toml").write_text(manifest + 'weights = "wide.safetensors"\nbase_models = ["demo"]\n')
    styles = StyleCatalog(settings).refresh().styles
    flat, grain, wide = styles["demo-flat"], styles["demo-grain"], styles["wide"]
    compiled = Engine(EngineConfig.from_settings(settings))
    assert compiled.fast.compiled_blocks == 2 and compiled.fast.moe_layers == 2
    cache = tmp_path / "inductor"
    assert any(cache.iterdir()), "inductor wrote its cache where NOISETT_COMPILE_CACHE_DIR says"
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 8, "two block kinds × square and masked × batch 1 and 2, compiled at load"
    images = {}
    for ratio in ASPECT_RATIOS:  # every preset, with and without classifier-free guidance
        for guidance in (0.0, 5.0):
            image = compiled.generate(spec(ratio, guidance), 0, lambda step: None, lambda: False)
            images[ratio, guidance] = image
    # Style switches, back to the base, and a style at strength 0: the slot holds each in turn.
    runs: list[tuple[Style | None, float]] = [
        (flat, 1.0),
        (grain, 0.5),
        (None, 0.0),
        (flat, 1.0),
        (flat, 0.0),
    ]
    styled = [
        compiled.generate(spec("1:1", 5.0, style, strength), 0, lambda step: None, lambda: False, style)
        for style, strength in runs
    ]
    assert counters["stats"]["unique_graphs"] == graphs, "a preset or a style compiled on a user's image"
    # Outside the slot, and back: right, at the cost of compiling.
    runs += [(wide, 1.0), (flat, 1.0)]
    styled += [
        compiled.generate(spec("1:1", 5.0, style, strength), 0, lambda step: None, lambda: False, style)
        for style, strength in runs[-2:]
    ]
    eager = Engine(EngineConfig.from_settings(make_settings(compile="off")))

    def largest_difference(a: object, b: object) -> int:
        return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())

    for key in (("1:1", 5.0), ("16:9", 0.0)):
        alone = eager.generate(spec(*key), 0, lambda s: None, lambda: False)
        assert largest_difference(images[key], alone) <= 1, key
    for (style, strength), image in zip(runs, styled, strict=True):
        alone = eager.generate(spec("1:1", 5.0, style, strength), 0, lambda s: None, lambda: False, style)
        assert largest_difference(image, alone) <= 1, (style and style.name, strength)
    assert largest_difference(styled[0], images["1:1", 5.0]) > 8, "the style changes the image"
    assert largest_difference(styled[4], images["1:1", 5.0]) <= 1, "strength 0 is the base image"
