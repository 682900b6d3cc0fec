"""A tiny random-weight HiDream pipeline, built offline from configs.

It uses the real `HiDreamImagePipeline` class and is saved with `save_pretrained`, so the engine loads
it through the same `from_pretrained` path as the real model. It makes noise, fast, on a CPU: for the
quickstart and the tests. Component shapes follow diffusers' own HiDream pipeline tests; the
tokenizers are built from generated vocabularies because no hub is reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
)
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from noisett_mcp.config import DEMO_VERSION
from noisett_mcp.schemas import DEMO_RENDER_SIDE

# Bump when the components change, so cached folders are rebuilt.
# The 1-block VAE has a scale factor of 1: 64 latent px render 64×64 images in well under a second.
DEMO_SAMPLE_SIZE = DEMO_RENDER_SIDE
MARKER = "noisett.json"
# The LoRA target modules of HiDream's attention blocks (the demo styles use them).
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out"]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte → printable-unicode table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _clip_tokenizer() -> CLIPTokenizer:
    # Byte-level BPE without merges: every byte is a token.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    for symbol in _byte_symbols():
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"):
        vocab[special] = len(vocab)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    bos = vocab["<|begin_of_text|>"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=131072,
    )


def demo_tokenizers() -> dict[str, PreTrainedTokenizerBase]:
    """The pipeline's four tokenizers, from generated vocabularies (also for full-size random models)."""
    return {
        "tokenizer": _clip_tokenizer(),
        "tokenizer_2": _clip_tokenizer(),
        "tokenizer_3": _t5_tokenizer(),
        "tokenizer_4": _llama_tokenizer(),
    }


def build_demo_pipeline() -> HiDreamImagePipeline:
    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],
        text_emb_dim=64,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        # Latent size the positional ids are padded to: DEMO_SAMPLE_SIZE, so every aspect ratio fits.
        max_resolution=(DEMO_SAMPLE_SIZE, DEMO_SAMPLE_SIZE),
        llama_layers=(0, 1),
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(scaling_factor=0.3611, shift_factor=0.1159)
    clip = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(clip)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(clip)
    t5 = T5Config(
        vocab_size=1103,
        d_model=32,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=5,
        num_decoder_layers=5,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.1,
        initializer_factor=0.002,
    )
    torch.manual_seed(0)
    text_encoder_3 = T5EncoderModel(t5)
    llama = LlamaConfig(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=256,
        eos_token_id=258,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    text_encoder_4 = LlamaForCausalLM(llama)
    text_encoder_4.generation_config.pad_token_id = 1
    return HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=text_encoder_3,
        text_encoder_4=text_encoder_4,
        transformer=transformer,
        **demo_tokenizers(),
    )


def write_demo_model(folder: Path) -> Path:
    """Save the demo pipeline to `folder` (idempotent) and return the folder."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("demo_version") == DEMO_VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    build_demo_pipeline().save_pretrained(folder)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"demo_version": DEMO_VERSION, "sample_size": DEMO_SAMPLE_SIZE}))
    os.replace(tmp, marker)  # written last: a folder with a marker is complete
    return folder
