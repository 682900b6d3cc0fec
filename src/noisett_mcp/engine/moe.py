"""A sync-free mixture of experts for HiDream-I1's transformer, installed on a loaded model at one seam.

diffusers' `MOEFeedForwardSwiGLU.moe_infer` (0.42) counts each expert's tokens with
`bincount().cpu().numpy()` and loops over the experts in Python: one host sync in each of the 48 MoE
layers of a forward, the launch gaps that follow, and a graph break for torch.compile. Here the same
top-2 routing and weights drive two grouped GEMMs instead (`torch._grouped_mm`): tokens sorted by
expert, w1 and w3 of every expert in one GEMM, w2 in another, each output scaled by its gate weight and
summed back onto its token. Every tensor shape depends on the token count only, so nothing waits for
the host and a compiled block is one graph.

Numerics: a token's two weighted expert outputs are added in one step, as the stock loop adds them to
zeros, so the result differs from stock only by the GEMM kernels' own rounding.

Where `_grouped_mm` is not fast (CUDA before Hopper, or not bf16), torch's fallback copies the group
offsets to the host, which is the very sync this removes; there the stock `moe_infer` stays. The
alternative that needs no grouped GEMM, every expert on every token with a mask, is sync-free but
doubles the routed experts' FLOPs (4 experts instead of 2 per token, about 60 % of the transformer's
matmuls), so it is slower than the sync it saves.

The expert weights are restacked once into one tensor per projection, and each expert's `nn.Linear`
keeps a view of it: no second copy, and the stock path, LoRA and `state_dict` still see the weights.
A module whose experts were wrapped (a LoRA on the experts, bitsandbytes layers) runs the stock path.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.transformers import transformer_hidream_image as hidream
from torch import nn

log = logging.getLogger(__name__)

# What install_fast_moe replaces and relies on; tests/unit/test_moe.py pins their source.
MOE_CLASS = hidream.MOEFeedForwardSwiGLU
GATE_CLASS = hidream.MoEGate
EXPERT_CLASS = hidream.HiDreamImageFeedForwardSwiGLU


@dataclass
class StackedExperts:
    """One MoE layer's routed expert weights, stacked: w13 is (experts, 2·hidden, dim), w2 (experts,
    dim, hidden). The experts' own Linear weights are views of these."""

    w13: torch.Tensor
    w2: torch.Tensor
    hidden: int


def grouped_mm_is_sync_free(device: torch.device, dtype: torch.dtype) -> bool:
    """True where torch's grouped GEMM runs without a host round trip: CUDA's CUTLASS kernel (bf16 on
    compute capability 9.x or 10.x) or the CPU, where there is no device to wait for."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda" or dtype != torch.bfloat16:
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major in (9, 10)


def _stack(moe: Any) -> StackedExperts:
    """Restack the experts' weights, expert by expert, and point each Linear at its slice."""
    experts = list(moe.experts)
    first = experts[0]
    hidden, dim = first.w1.weight.shape
    like = first.w1.weight
    w13 = torch.empty(len(experts), 2 * hidden, dim, dtype=like.dtype, device=like.device)
    w2 = torch.empty(len(experts), dim, hidden, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for index, expert in enumerate(experts):
            w13[index, :hidden].copy_(expert.w1.weight)
            w13[index, hidden:].copy_(expert.w3.weight)
            w2[index].copy_(expert.w2.weight)
            # The old weights go as soon as their views replace them: no second copy of the layer.
            expert.w1.weight = nn.Parameter(w13[index, :hidden], requires_grad=False)
            expert.w3.weight = nn.Parameter(w13[index, hidden:], requires_grad=False)
            expert.w2.weight = nn.Parameter(w2[index], requires_grad=False)
    return StackedExperts(w13=w13, w2=w2, hidden=hidden)


def _plain(moe: Any) -> bool:
    """The experts are still plain Linear layers: not wrapped by peft (a LoRA on the experts) or
    replaced by bitsandbytes. A type check only, so that dynamo guards on it without a graph break."""
    return all(type(getattr(e, name)) is nn.Linear for e in moe.experts for name in ("w1", "w2", "w3"))


@torch.library.custom_op("noisett::grouped_mm", mutates_args=())
def grouped_mm(tokens: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """tokens (rows, k) @ weights (groups, k, n), the rows of group g ending at ends[g]. torch's own
    op, behind a custom op because its fake (tracing) version accepts bf16 only, and the CPU float32
    tests compile the same graph as CUDA."""
    return torch._grouped_mm(tokens, weights, offs=ends)


@grouped_mm.register_fake
def _grouped_mm_shape(tokens: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return tokens.new_empty(tokens.shape[0], weights.shape[-1])


def routed_experts(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    expert_weight: torch.Tensor,
    top_k: int,
    stacked: StackedExperts,
) -> torch.Tensor:
    """Σ over each token's top-k experts of weight · expert(token), without a host sync.

    x: (tokens, dim). expert_index: (tokens · top_k,), token-major, as the gate returns it.
    expert_weight: (tokens · top_k, 1)."""
    experts = stacked.w13.shape[0]
    order = expert_index.argsort(stable=True)  # slots grouped by expert
    token = order // top_k
    counts = torch.zeros(experts, dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, expert_index, torch.ones_like(expert_index, dtype=torch.int32))  # no bincount
    ends = counts.cumsum(0, dtype=torch.int32)
    gathered = x[token]
    up = grouped_mm(gathered, stacked.w13.transpose(1, 2), ends)
    gate, value = up.split(stacked.hidden, dim=-1)
    down = grouped_mm(nn.functional.silu(gate) * value, stacked.w2.transpose(1, 2), ends)
    down = down * expert_weight[order]
    # Back to token-major slots, then each token's two outputs added in one step, as the stock loop does.
    slots = torch.empty_like(down)
    slots[order] = down
    return slots.view(-1, top_k, x.shape[-1]).sum(dim=1)


def _fast_moe_infer(
    self: Any, x: torch.Tensor, flat_expert_indices: torch.Tensor, flat_expert_weights: torch.Tensor
) -> torch.Tensor:
    stacked: StackedExperts = self._noisett_stacked
    if not _plain(self):
        return MOE_CLASS.moe_infer(self, x, flat_expert_indices, flat_expert_weights)
    return routed_experts(x, flat_expert_indices, flat_expert_weights, self.num_activated_experts, stacked)


def check_structure(moe: Any) -> None:
    """Fail loudly if diffusers' MoE no longer has the parts this module reads."""
    gate = getattr(moe, "gate", None)
    experts = getattr(moe, "experts", None)
    if not (
        isinstance(gate, GATE_CLASS)
        and isinstance(experts, nn.ModuleList)
        and all(isinstance(e, EXPERT_CLASS) for e in experts)
        and isinstance(getattr(moe, "shared_experts", None), EXPERT_CLASS)
        and getattr(moe, "num_activated_experts", None) == gate.top_k
        and callable(getattr(MOE_CLASS, "moe_infer", None))
    ):
        raise TypeError(
            "diffusers' MOEFeedForwardSwiGLU changed (gate, experts, shared_experts, num_activated_experts "
            "or moe_infer): re-verify noisett_mcp/engine/moe.py against it"
        )


def install_fast_moe(transformer: nn.Module) -> int:
    """Replace `moe_infer` on each MoE layer of a loaded, placed transformer with the sync-free grouped
    GEMM, where it is sync-free on the transformer's device and dtype. Returns the layers changed (0
    where the stock path stays). Install after the model is on its device, and do not fuse a LoRA into the
    experts afterwards: both would give the experts new tensors, apart from the stacks."""
    layers: list[Any] = [m for m in transformer.modules() if isinstance(m, MOE_CLASS)]
    if not layers:
        return 0
    weight = layers[0].experts[0].w1.weight
    if not grouped_mm_is_sync_free(weight.device, weight.dtype):
        log.info(
            "MoE: grouped GEMM is not sync-free on %s %s; the stock router stays", weight.device, weight.dtype
        )
        return 0
    changed = 0
    for moe in layers:
        check_structure(moe)
        if not _plain(moe):
            continue  # quantized or wrapped experts keep the stock loop
        moe._noisett_stacked = _stack(moe)
        moe.moe_infer = types.MethodType(_fast_moe_infer, moe)
        changed += 1
    log.info("MoE: sync-free grouped experts in %d of %d layers", changed, len(layers))
    return changed


def remove_fast_moe(transformer: nn.Module) -> None:
    """Back to diffusers' own `moe_infer` (the experts keep their restacked weights, same values): the
    benchmarks and tests compare the two paths on one model."""
    for moe in transformer.modules():
        if isinstance(moe, MOE_CLASS) and "moe_infer" in vars(moe):
            del moe.moe_infer
