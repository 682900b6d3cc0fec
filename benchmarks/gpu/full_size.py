"""HiDream-I1 pipelines with random weights, built in seconds: the components are made on the meta device
(no memory), then given uninitialised memory on the target device and filled with small normal noise
there. A random-weight pipeline does the same compute as the real one; nothing is downloaded.

`full` uses HiDream-I1's published component configs (../shared/reference/hidream_full_size_configs.py):
the 17 B MoE transformer, Llama-3.1-8B, T5-XXL, CLIP-L and CLIP-G and the 16-channel VAE, about 31 B
parameters. `tiny` uses the demo model's shapes, so that `--dry-run` runs the same code on a CPU.
Also here: bitsandbytes int8/NF4 quantization of a built model in place, and weight sizes.
"""

from __future__ import annotations

from typing import Literal

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
)
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5EncoderModel,
)

from noisett_mcp.engine.demo import build_demo_pipeline, demo_tokenizers

Scale = Literal["full", "tiny"]
Quantization = Literal["int8", "nf4"]
NOISE_STD = 0.02  # small enough that 48 random blocks keep activations finite
TINY_SAMPLE_SIZE = 32  # 32² images from the 1-block VAE: the dry run is about code paths, not pixels


def _clip(hidden: int, intermediate: int, layers: int, heads: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=hidden,
        max_position_embeddings=248,
        vocab_size=49408,
    )
    return CLIPTextModelWithProjection(config)


def _full_components() -> dict[str, nn.Module]:
    return {
        "transformer": HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=16,
            num_single_layers=32,
            attention_head_dim=128,
            num_attention_heads=20,
            caption_channels=[4096, 4096],
            text_emb_dim=2048,
            num_routed_experts=4,
            num_activated_experts=2,
            axes_dims_rope=(64, 32, 32),
            max_resolution=(128, 128),
            llama_layers=list(range(32)) + [31] * 16,
        ).eval(),
        # The Flux VAE that HiDream ships, with its latent scaling.
        "vae": AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        ),
        "text_encoder": _clip(hidden=768, intermediate=3072, layers=12, heads=12),  # CLIP-L
        "text_encoder_2": _clip(hidden=1280, intermediate=5120, layers=32, heads=20),  # CLIP-G
        "text_encoder_3": T5EncoderModel(  # T5-XXL's encoder
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_ff=10240,
                d_kv=64,
                num_heads=64,
                num_layers=24,
                feed_forward_proj="gated-gelu",
            )
        ),
        "text_encoder_4": LlamaForCausalLM(  # Llama-3.1-8B
            LlamaConfig(
                vocab_size=128256,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                tie_word_embeddings=False,
            )
        ),
    }


def _meta_components(scale: Scale) -> dict[str, object]:
    with init_empty_weights():  # parameters on the meta device; buffers stay real (restored below)
        if scale == "full":
            return {"scheduler": FlowMatchEulerDiscreteScheduler(), **_full_components(), **demo_tokenizers()}
        return dict(build_demo_pipeline().components)


def build_pipeline(scale: Scale, device: str, dtype: torch.dtype, seed: int = 0) -> HiDreamImagePipeline:
    """A random-weight HiDreamImagePipeline of `scale`, its weights in `dtype` on `device`."""
    pipe = HiDreamImagePipeline(**_meta_components(scale))
    if scale == "tiny":
        pipe.default_sample_size = TINY_SAMPLE_SIZE
    generator = torch.Generator(device).manual_seed(seed)
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            _materialize(component, device, dtype, generator)
    return pipe


def fresh_component(scale: Scale, name: str, device: str, dtype: torch.dtype, seed: int = 1) -> nn.Module:
    """A new random copy of one component: quantizing again needs unquantized weights."""
    module = _meta_components(scale)[name]
    assert isinstance(module, nn.Module)
    _materialize(module, device, dtype, torch.Generator(device).manual_seed(seed))
    return module


@torch.no_grad()
def _materialize(module: nn.Module, device: str, dtype: torch.dtype, generator: torch.Generator) -> None:
    # Buffers (position ids, rotary frequencies) were computed in __init__: to_empty would lose them.
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    module.to(dtype).to_empty(device=device)
    for name, buffer in module.named_buffers():
        buffer.copy_(buffers[name])
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, NOISE_STD, generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:  # norm scales
            param.fill_(1.0)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (quantized ones included)."""
    tensors = [*module.parameters(), *module.buffers()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    # bitsandbytes keeps NF4 block scales and int8 row scales beside the weight.
    for sub in module.modules():
        state = getattr(getattr(sub, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        scb = getattr(getattr(sub, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


@torch.no_grad()
def quantize(module: nn.Module, mode: Quantization, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear (but an LM head, which the text encoder never uses) with its bitsandbytes
    counterpart, as diffusers' and transformers' bitsandbytes loaders do, quantizing the current weights
    where they are. Returns how many layers were replaced."""
    import bitsandbytes as bnb

    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name == "lm_head":
                continue
            weight, device = child.weight.data, child.weight.device
            shape = (child.in_features, child.out_features)
            if mode == "nf4":
                layer = bnb.nn.Linear4bit(
                    *shape,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                    compress_statistics=False,  # BitsAndBytesConfig's default: no double quantization
                    device="meta",  # no throwaway initialisation of the weight
                )
                layer.weight = bnb.nn.Params4bit(
                    weight, requires_grad=False, quant_type="nf4", compress_statistics=False
                ).to(device)
            else:  # LLM.int8 with BitsAndBytesConfig(load_in_8bit=True)'s outlier threshold, 6.0
                layer = bnb.nn.Linear8bitLt(
                    *shape, bias=child.bias is not None, has_fp16_weights=False, threshold=6.0, device="meta"
                )
                layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                layer.weight._quantize(device)  # .to() only quantizes weights that come from the CPU
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer)
            count += 1
    return count
