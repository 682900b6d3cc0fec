"""styles/manifest.py: what a manifest may say, and the pure helpers that match styles to models and
read an adapter's modules, without a model or a catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from noisett_mcp.styles.manifest import (
    DEMO_STYLES_DIR,
    Style,
    StyleManifest,
    adapter_modules,
    matches_model,
    preview_uri,
    read_adapter_modules,
)


def manifest(**fields: Any) -> dict[str, Any]:
    return {
        "name": "brand-flat",
        "title": "Brand flat",
        "description": "Flat vector art in the brand's colours.",
        "weights": "brand-flat.safetensors",
        "base_models": ["HiDream-ai/HiDream-I1-*"],
    } | fields


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        StyleManifest.model_validate(manifest(**fields))
    return str(caught.value)


def test_a_minimal_manifest_takes_the_documented_defaults() -> None:
    parsed = StyleManifest.model_validate(manifest())
    assert (parsed.strength, parsed.prompt_template, parsed.negative_prompt) == (1.0, "{prompt}", "")
    assert parsed.trigger_words == [] and parsed.preview is None and not parsed.is_hub


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"name": "none"}, "'none' is reserved for the base model"),
        ({"name": "Brand Flat"}, "should match pattern"),
        ({"prompt_template": "no placeholder"}, "must contain {prompt} exactly once"),
        ({"prompt_template": "{prompt} and {prompt}"}, "must contain {prompt} exactly once"),
        ({"weights": "brand.ckpt"}, "is a pickle file, which can run code when loaded"),
        ({"weights": "brand.gguf"}, "weights must be a .safetensors file"),
        ({"weights": "../elsewhere/brand.safetensors"}, "must be a path inside the styles folder"),
        ({"weights": "/etc/brand.safetensors"}, "must be a path inside the styles folder"),
        ({"revision": "main"}, "revision only applies to hub weights"),
        ({"weight_name": "lora.safetensors"}, "weights must be a hub repo id like 'owner/name'"),
        ({"preview": "preview.gif"}, "preview must be a .png, .jpg or .webp file"),
        ({"preview": "../preview.png"}, "must be a path inside the styles folder"),
        ({"strength": 2.5}, "less than or equal to 2"),
        ({"base_models": []}, "at least 1 item"),
        ({"colour": "teal"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_manifest_is_refused_saying_what_is_allowed(fields: dict[str, Any], said: str) -> None:
    assert said in refusal(**fields)


def test_hub_weights_name_a_repo_and_a_safetensors_file() -> None:
    parsed = StyleManifest.model_validate(
        manifest(weights="owner/brand-lora", weight_name="lora.safetensors", revision="abc123")
    )
    assert parsed.is_hub
    assert "is a pickle file" in refusal(weights="owner/brand-lora", weight_name="lora.bin")


def test_a_style_applies_its_template_and_adds_its_negative_prompt() -> None:
    parsed = StyleManifest.model_validate(
        manifest(prompt_template="{prompt}, flat vector", negative_prompt="photo", preview="look.png")
    )
    style = Style(parsed, Path("/styles/brand-flat.toml"), None, None, frozenset())
    assert style.prompt("  a {curly} fox ") == "a {curly} fox, flat vector"  # braces stay as typed
    assert style.negative_prompt("blurry") == "blurry, photo"
    assert style.negative_prompt("") == "photo"
    assert style.preview_named == Path("/styles/look.png")
    assert style.info().preview is None, "an unchecked preview file is not offered"
    checked = Style(parsed, style.source, None, None, frozenset(), preview_file=Path("/styles/look.png"))
    assert checked.info().preview == preview_uri("brand-flat") == "style://brand-flat/preview"


@pytest.mark.parametrize(
    ("patterns", "model", "matches"),
    [
        (["HiDream-ai/HiDream-I1-*"], "HiDream-ai/HiDream-I1-Fast", True),
        (["hidream-ai/hidream-i1-fast"], "HiDream-ai/HiDream-I1-Fast", True),  # hub ids ignore case
        (["HiDream-ai/HiDream-I1-Full"], "HiDream-ai/HiDream-I1-Fast", False),
        (["demo"], "demo", True),
        (["demo"], "HiDream-ai/HiDream-I1-Fast", False),
        (["HiDream-ai/HiDream-I1-*"], "blob://models/HiDream-I1-Dev", True),  # by the folder's name
    ],
)
def test_base_models_match_by_id_pattern_or_folder_name(
    patterns: list[str], model: str, matches: bool
) -> None:
    assert matches_model(patterns, model) is matches


def test_a_local_model_folder_matches_by_its_name(tmp_path: Path) -> None:
    folder = tmp_path / "HiDream-I1-Fast"
    folder.mkdir()
    assert matches_model(["HiDream-ai/HiDream-I1-*"], str(folder))
    assert not matches_model(["HiDream-ai/HiDream-I1-*"], str(tmp_path / "missing" / "HiDream-I1-Fast"))


def test_adapter_modules_follow_the_hidream_loader_s_key_names() -> None:
    keys = [
        "transformer.blocks.0.attn.to_q.lora_A.weight",
        "transformer.blocks.0.attn.to_q.lora_B.weight",
        "diffusion_model.blocks.1.ff.lora_down.weight",  # ComfyUI/kohya: diffusion_model. is transformer.
        "diffusion_model.blocks.1.ff.alpha",
        "text_encoder.layers.0.lora_A.weight",  # not the transformer: ignored
    ]
    assert adapter_modules(keys) == {"blocks.0.attn.to_q", "blocks.1.ff"}


def test_an_adapter_s_modules_come_from_its_safetensors_header() -> None:
    modules = read_adapter_modules(DEMO_STYLES_DIR / "demo-flat.safetensors")
    assert modules and all(not module.startswith("transformer.") for module in modules)
