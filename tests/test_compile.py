"""NOISETT_COMPILE=on compiles each transformer block whole (fullgraph, the router sync-free) during the
load's warm-up, so that no preset compiles on a user's image; and the compiled engine renders the eager
engine's image. On the demo model in float32 on the CPU: slow (inductor's C++ compiles, about a minute on
a 2-core machine), so marked slow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch._dynamo.utils import counters

from noisett_mcp.config import Settings
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.fast import compile_wanted
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.schemas import ASPECT_RATIOS, GenerationSpec, rendered_size


def spec(ratio: str, guidance: float) -> GenerationSpec:
    width, height = rendered_size(ratio, 64, 2)
    return GenerationSpec(
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
def test_after_the_load_s_warm_up_no_preset_compiles_and_the_image_is_the_eager_one(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    compiled = Engine(
        EngineConfig.from_settings(make_settings(compile="on", compile_cache_dir=tmp_path / "inductor"))
    )
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
    assert counters["stats"]["unique_graphs"] == graphs, "a preset compiled on a user's image"
    eager = Engine(EngineConfig.from_settings(make_settings(compile="off")))
    for key in (("1:1", 5.0), ("16:9", 0.0)):
        alone = eager.generate(spec(*key), 0, lambda s: None, lambda: False)
        difference = np.abs(np.asarray(images[key], np.int16) - np.asarray(alone, np.int16)).max()
        assert difference <= 1, f"{key}: largest pixel difference {difference}/255"
