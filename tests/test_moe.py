"""The sync-free MoE (engine/moe.py) gives diffusers' own result: on the demo model's real router inputs in
float32 on the CPU, layer by layer and for a whole image, and it notices when diffusers changes the code
it replaces."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from noisett_mcp.config import Settings
from noisett_mcp.engine import moe
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.demo import build_demo_pipeline
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.schemas import GenerationSpec

# sha256 (first 16 hex digits) of the diffusers 0.42.1 source that moe.py replaces or relies on. When one
# changes, read the new code and re-verify: the gate still returns (token-major top-k indices, their
# softmax weights); forward still hands moe_infer (x, indices, weights as a column) in eval mode and adds
# shared_experts itself; each expert is still w2(silu(w1(x)) * w3(x)) with bias-free Linears. Then update.
PINNED = {
    "MOEFeedForwardSwiGLU.__init__": "1acbe9ec19049f79",
    "MOEFeedForwardSwiGLU.forward": "213df6fdb5ae5096",
    "MOEFeedForwardSwiGLU.moe_infer": "9c2255e05bef6637",
    "MoEGate.forward": "b0e5227ea1768149",
    "HiDreamImageFeedForwardSwiGLU.forward": "e76ecd7a8ad1485d",
}


def test_the_diffusers_code_that_the_fast_moe_replaces_is_the_code_it_was_verified_against() -> None:
    functions = (
        moe.MOE_CLASS.__init__,
        moe.MOE_CLASS.forward,
        moe.MOE_CLASS.moe_infer,
        moe.GATE_CLASS.forward,
        moe.EXPERT_CLASS.forward,
    )
    found = {
        f.__qualname__: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for f in functions
    }
    changed = sorted(name for name in PINNED if found.get(name) != PINNED[name])
    assert not changed, (
        f"diffusers changed {changed}: re-verify noisett_mcp/engine/moe.py against the new code (see "
        "PINNED's comment for what it relies on), then update PINNED"
    )


def captured_router_inputs() -> tuple[Any, list[tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """The demo transformer, and every (layer, x, indices, weights) its MoE layers saw in a 2-step run."""
    pipe = build_demo_pipeline()
    stock = moe.MOE_CLASS.moe_infer
    seen: list[tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(self: Any, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> Any:
        seen.append((self, x.clone(), indices.clone(), weights.clone()))
        return stock(self, x, indices, weights)

    moe.MOE_CLASS.moe_infer = record
    try:
        with torch.inference_mode():
            pipe(
                prompt="a lighthouse at dusk",
                num_inference_steps=2,
                guidance_scale=5.0,  # batch 2, with the negative prompt
                generator=torch.Generator("cpu").manual_seed(7),
                output_type="latent",
            )
    finally:
        moe.MOE_CLASS.moe_infer = stock
    return pipe.transformer, seen


def test_the_grouped_experts_equal_diffusers_moe_infer_on_the_demo_models_real_inputs() -> None:
    transformer, seen = captured_router_inputs()
    assert moe.install_fast_moe(transformer) == 2
    assert len(seen) == 4  # two MoE layers, two steps
    for layer, x, indices, weights in seen:
        assert len(indices.unique()) == 4, "every expert gets tokens, so every group is exercised"
        with torch.inference_mode():
            expected = moe.MOE_CLASS.moe_infer(layer, x, indices, weights)
            got = layer.moe_infer(x, indices, weights)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


def test_an_expert_that_no_token_chose_is_skipped_as_the_stock_loop_skips_it() -> None:
    transformer, seen = captured_router_inputs()
    layer, x, indices, weights = seen[0]
    tokens = x.shape[0]
    # Every token to experts 0 and 3, in both orders: experts 1 and 2 get nothing.
    indices = torch.tensor([0, 3, 3, 0], dtype=indices.dtype).repeat(tokens // 2)
    moe.install_fast_moe(transformer)
    with torch.inference_mode():
        expected = moe.MOE_CLASS.moe_infer(layer, x, indices, weights)
        got = layer.moe_infer(x, indices, weights)
    assert (got - expected).abs().max().item() <= 1e-5


def test_a_whole_image_through_the_engine_is_the_stock_image_within_one_level(
    make_settings: Callable[..., Settings],
) -> None:
    engine = Engine(EngineConfig.from_settings(make_settings(compile="off")))
    assert engine.fast.moe_layers == 2, "the engine installs the sync-free MoE on the CPU"
    spec = GenerationSpec(
        prompt="a lighthouse at dusk",
        width=64,
        height=64,
        steps=3,
        guidance=5.0,
        seeds=[11],
        model="demo",
        variant="full",
    )
    fast = engine.generate(spec, 0, lambda step: None, lambda: False)
    moe.remove_fast_moe(engine.pipe.transformer)
    stock = engine.generate(spec, 0, lambda step: None, lambda: False)
    difference = np.abs(np.asarray(fast, np.int16) - np.asarray(stock, np.int16)).max()
    assert difference <= 1, f"largest pixel difference {difference}/255"


def test_the_grouped_gemm_is_used_only_where_it_needs_no_host_round_trip() -> None:
    assert moe.grouped_mm_is_sync_free(torch.device("cpu"), torch.float32)
    # CUDA decides by the device's compute capability, which this machine cannot show; bf16 only.
    assert not moe.grouped_mm_is_sync_free(torch.device("cuda"), torch.float16)


def test_a_layer_whose_experts_were_wrapped_runs_the_stock_loop() -> None:
    transformer, seen = captured_router_inputs()
    moe.install_fast_moe(transformer)
    layer, x, indices, weights = seen[0]
    wrapped = layer.experts[1].w3

    class Wrapped(torch.nn.Module):  # what peft or bitsandbytes do to a Linear: another module type
        def __init__(self) -> None:
            super().__init__()
            self.inner = wrapped

        def forward(self, value: torch.Tensor) -> torch.Tensor:
            return self.inner(value) * 2

    layer.experts[1].w3 = Wrapped()
    with torch.inference_mode():
        got = layer.moe_infer(x, indices, weights)
        expected = moe.MOE_CLASS.moe_infer(layer, x, indices, weights)
    assert torch.equal(got, expected), "the wrapped expert's own forward ran"


@pytest.mark.parametrize("attribute", ["gate", "shared_experts"])
def test_a_moe_layer_without_the_parts_it_relies_on_is_refused_with_what_to_re_verify(attribute: str) -> None:
    transformer, _ = captured_router_inputs()
    layer = next(m for m in transformer.modules() if isinstance(m, moe.MOE_CLASS))
    delattr(layer, attribute)
    with pytest.raises(TypeError, match=r"re-verify noisett_mcp/engine/moe\.py"):
        moe.install_fast_moe(transformer)
