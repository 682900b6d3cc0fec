"""Brand styles on the demo model: tiny LoRA adapters made here with peft, loaded by real diffusers, used
through a real MCP client session. Pixels are compared exactly: a style must change the output, and
switching styles must never leak one request's adapter into another's."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import safetensors.torch
import torch
from mcp import Client
from PIL import Image

from noisett_mcp import images
from noisett_mcp.cli import main as cli_main
from noisett_mcp.config import Settings
from noisett_mcp.engine.adapters import adapter_name
from noisett_mcp.engine.demo_loras import demo_transformer, write_random_lora
from noisett_mcp.service import Noisett
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR, sha256_file
from tests.support import add_style

pytestmark = pytest.mark.anyio

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="session")
def adapters(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapter files: two good random LoRAs, and the bad kinds an operator might drop in."""
    folder = tmp_path_factory.mktemp("adapters")
    transformer = demo_transformer(model_cache)
    made = {
        name: write_random_lora(transformer, folder / f"{name}.safetensors", seed)
        for name, seed in [("a", 1), ("b", 2)]
    }
    tensors = safetensors.torch.load_file(made["a"])
    bad = {
        # Keys for modules this transformer does not have: diffusers-style, for some other model.
        "alien": {k.replace(".attn1.", ".attn9."): v for k, v in tensors.items()},
        # A LoRA for a UNet model: nothing in it is for the transformer.
        "unet": {k.replace("transformer.", "unet."): v for k, v in tensors.items()},
        # The right module names with the wrong shapes (made for a bigger model of the same family).
        "misshapen": {k: torch.zeros(4, 99) if ".lora_A." in k else v for k, v in tensors.items()},
        # A safetensors file that is not a LoRA at all.
        "plain": {"weight": torch.zeros(2, 2)},
    }
    for name, state in bad.items():
        made[name] = folder / f"{name}.safetensors"
        safetensors.torch.save_file({k: v.clone() for k, v in state.items()}, made[name])
    return made


async def generate(client: Client, **arguments: Any) -> tuple[dict[str, Any], bytes]:
    """One image through generate_image; returns its structured info and the full file."""
    result = await client.call_tool("generate_image", {"prompt": PROMPT, "seed": 3, "steps": 2} | arguments)
    assert not result.is_error, result.content[0].text
    (info,) = result.structured_content["images"]
    return info, await full_image(client, info["uri"])


async def full_image(client: Client, uri: str) -> bytes:
    return base64.b64decode((await client.read_resource(uri)).contents[0].blob)


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def style_names(client: Client) -> list[str]:
    result = await client.call_tool("list_styles", {})
    assert not result.is_error
    return [style["name"] for style in result.structured_content["styles"]]


async def error_text(client: Client, **arguments: Any) -> str:
    result = await client.call_tool("generate_image", {"prompt": PROMPT, "steps": 2} | arguments)
    assert result.is_error
    return result.content[0].text


async def test_a_style_changes_the_output_and_switching_back_gives_its_exact_pixels(
    client: Client, settings: Settings, adapters: dict[str, Path]
) -> None:
    add_style(settings.resolved_styles_dir, "a", adapters["a"])
    base_info, base = await generate(client)
    a_info, a = await generate(client, style="a")
    base_again_info, base_again = await generate(client, style="none")
    _, a_again = await generate(client, style="a")

    assert pixels(a) != pixels(base), "the style changed nothing"
    assert pixels(base_again) == pixels(base), "the base model changed after a style was used"
    assert pixels(a_again) == pixels(a), "A → base → A did not give A's pixels again"

    sha = sha256_file(adapters["a"])
    assert (a_info["style"], a_info["style_strength"], a_info["style_sha256"]) == ("a", 1.0, sha)
    assert (base_info["style"], base_info["style_strength"], base_info["style_sha256"]) == ("none", 0.0, None)
    assert base_again_info["style_sha256"] is None
    meta = images.read_metadata(a)
    assert (meta["style"], meta["style_strength"], meta["style_sha256"], meta["seed"]) == ("a", 1.0, sha, 3)


async def test_styles_differ_strength_scales_and_queued_requests_each_get_their_own_adapter(
    client: Client, settings: Settings, adapters: dict[str, Path]
) -> None:
    for name in ("a", "b"):
        add_style(settings.resolved_styles_dir, name, adapters[name])
    reference = {}
    variants: dict[str, dict[str, Any]] = {
        "none": {},
        "a": {"style": "a"},
        "b": {"style": "b"},
        "a@0": {"style": "a", "style_strength": 0},
        "a@0.5": {"style": "a", "style_strength": 0.5},
    }
    for key, arguments in variants.items():
        info, data = await generate(client, **arguments)
        reference[key] = pixels(data)
    assert info["style_strength"] == 0.5
    assert reference["a"] != reference["b"] and reference["b"] != reference["none"]
    assert reference["a@0"] == reference["none"], "strength 0 is not the base model"
    assert reference["a@0.5"] not in (reference["a"], reference["none"])

    # Queue four requests at once; the single worker switches adapters between them.
    order = ["b", "none", "a", "b"]
    queued = []
    for key in order:
        result = await client.call_tool(
            "generate_image", {"prompt": PROMPT, "seed": 3, "steps": 2, "style": key, "wait": False}
        )
        assert not result.is_error, result.content[0].text
        queued.append(result.structured_content["images"][0])
    for key, info in zip(order, queued, strict=True):
        with anyio.fail_after(120):
            while (await client.call_tool("get_image", {"image_id": info["id"]})).structured_content["image"][
                "status"
            ] != "done":
                await anyio.sleep(0.05)
        assert pixels(await full_image(client, info["uri"])) == reference[key], f"request for {key} leaked"


async def test_template_negative_prompt_recommendations_and_preview_reach_the_assistant(
    client: Client, settings: Settings, adapters: dict[str, Path]
) -> None:
    folder = settings.resolved_styles_dir
    add_style(
        folder,
        "brand",
        adapters["a"],
        description="Flat vector, teal and coral.",
        trigger_words=["brandy"],
        strength=0.7,
        prompt_template="{prompt}, brandy flat vector",
        negative_prompt="blurry",
        aspect_ratio="16:9",
        steps=2,
        guidance=1.5,
        preview="brand.png",
    )
    Image.new("RGB", (8, 8), "teal").save(folder / "brand.png")
    listing = await client.call_tool("list_styles", {})
    entry = next(s for s in listing.structured_content["styles"] if s["name"] == "brand")
    assert entry == {
        "name": "brand",
        "title": "Style brand",
        "description": "Flat vector, teal and coral.",
        "trigger_words": ["brandy"],
        "strength": 0.7,
        "aspect_ratio": "16:9",
        "steps": 2,
        "guidance": 1.5,
        "preview": "style://brand/preview",
    }
    preview = (await client.read_resource("style://brand/preview")).contents[0]
    assert preview.mime_type == "image/png"
    assert base64.b64decode(preview.blob) == (folder / "brand.png").read_bytes()

    # No steps or guidance in the call: the style's recommendations apply. Braces stay as typed.
    result = await client.call_tool(
        "generate_image", {"prompt": "a {curly} fox", "negative_prompt": "text", "style": "brand", "seed": 1}
    )
    assert not result.is_error, result.content[0].text
    (info,) = result.structured_content["images"]
    assert info["prompt"] == "a {curly} fox, brandy flat vector"
    assert info["negative_prompt"] == "text, blurry"
    assert (info["style_strength"], info["steps"], info["guidance"]) == (0.7, 2, 1.5)
    # What was asked is kept too: passing it back with the same style reproduces the image.
    assert (info["user_prompt"], info["user_negative_prompt"]) == ("a {curly} fox", "text")
    again = await client.call_tool(
        "generate_image",
        {"prompt": info["user_prompt"], "negative_prompt": "text", "style": "brand", "seed": 1},
    )
    assert again.structured_content["images"][0]["prompt"] == info["prompt"]


async def test_style_mistakes_get_errors_that_say_what_is_allowed(
    client: Client, settings: Settings, adapters: dict[str, Path]
) -> None:
    add_style(settings.resolved_styles_dir, "a", adapters["a"])
    add_style(
        settings.resolved_styles_dir, "big-model", adapters["b"], base_models=["HiDream-ai/HiDream-I1-*"]
    )
    names = await style_names(client)
    assert names[0] == "none" and {"a", "demo-flat", "demo-grain"} <= set(names)
    assert "big-model" not in names, "a style for another model was offered"

    text = await error_text(client, style="nope")
    assert "unknown style 'nope'" in text and "available styles: none, a, demo-flat, demo-grain" in text
    text = await error_text(client, style="big-model")
    assert "made for HiDream-ai/HiDream-I1-*, not this model" in text and "available styles" in text
    assert "less than or equal to 2" in await error_text(client, style="a", style_strength=2.5)
    assert "greater than or equal to 0" in await error_text(client, style="a", style_strength=-0.1)


async def test_each_bad_style_is_refused_with_its_file_named_and_good_styles_still_work(
    client: Client, service: Noisett, settings: Settings, adapters: dict[str, Path]
) -> None:
    folder = settings.resolved_styles_dir
    add_style(folder, "a", adapters["a"])
    add_style(folder, "alien", adapters["alien"])
    add_style(folder, "misshapen", adapters["misshapen"])
    add_style(folder, "unet", adapters["unet"])
    add_style(folder, "plain", adapters["plain"])
    add_style(folder, "nofile", None)
    add_style(folder, "escape", None, weights="../a.safetensors")
    add_style(folder, "too-strong", adapters["b"], strength=5)
    add_style(folder, "misnamed", adapters["b"], name="other-name", weights="misnamed.safetensors")
    add_style(folder, "incomplete", adapters["b"], description="")
    for suffix in ("bin", "pt", "ckpt"):
        (folder / f"pickled-{suffix}.{suffix}").write_bytes(b"\x80\x04pickle")
        add_style(folder, f"pickled-{suffix}", None, weights=f"pickled-{suffix}.{suffix}")
    (folder / "broken.toml").write_text('name = "broken"\ntitle = "no closing quote\n')

    expected = {
        "broken.toml": "malformed TOML",
        "incomplete.toml": "description: String should have at least 1 character",
        "misnamed.toml": "must match the file name 'misnamed'",
        "too-strong.toml": "strength: Input should be less than or equal to 2",
        "nofile.toml": "weights file 'nofile.safetensors' not found",
        "escape.toml": "must be a path inside the styles folder",
        "pickled-bin.toml": "is a pickle file",
        "pickled-pt.toml": "is a pickle file",
        "pickled-ckpt.toml": "is a pickle file",
        "plain.toml": "not a LoRA adapter",
        "unet.toml": "no key is for the transformer",
    }
    refused = {r.source.name: r.reason for r in service.styles.refresh().refused}
    assert set(refused) == set(expected)
    for file, words in expected.items():
        assert words in refused[file], (file, refused[file])
    # These look fine without the model: only the loaded transformer can refuse them.
    assert {"a", "alien", "misshapen"} <= set(await style_names(client))

    assert "is a pickle file" in await error_text(client, style="pickled-pt")
    text = await error_text(client, style="alien", seed=3)
    assert "alien.toml" in text and "match no module" in text and "other styles still work" in text
    text = await error_text(client, style="misshapen", seed=3)
    assert "misshapen.toml" in text and "diffusers could not load the adapter" in text
    assert not {"alien", "misshapen"} & set(await style_names(client)), "a refused adapter is still offered"
    engine = await service.runner.engine()
    assert not {"alien", "misshapen"} & set(engine.styles.loaded)
    leftovers = [
        n for n in engine.pipe.get_list_adapters().get("transformer", []) if "alien" in n or "mis" in n
    ]
    assert not leftovers, "a refused adapter stayed in the transformer"

    _, a = await generate(client, style="a")
    _, base = await generate(client)
    assert pixels(a) != pixels(base)

    # New weights for the refused style: it is tried again.
    shutil.copyfile(adapters["b"], folder / "alien.safetensors")
    assert "alien" in await style_names(client)


async def test_a_style_in_the_styles_folder_replaces_the_built_in_one_of_its_name(
    client: Client, settings: Settings, adapters: dict[str, Path]
) -> None:
    add_style(settings.resolved_styles_dir, "demo-flat", adapters["a"], title="Ours")
    listing = (await client.call_tool("list_styles", {})).structured_content["styles"]
    assert [s["title"] for s in listing if s["name"] == "demo-flat"] == ["Ours"]


async def test_styles_are_added_changed_and_removed_without_reloading_the_pipeline(
    client: Client, service: Noisett, settings: Settings, adapters: dict[str, Path]
) -> None:
    folder = settings.resolved_styles_dir
    engine = await service.runner.engine()
    pipe = engine.pipe
    assert "a" not in await style_names(client)

    add_style(folder, "a", adapters["a"])
    add_style(folder, "b", adapters["b"])
    assert {"a", "b"} <= set(await style_names(client))
    a_info, a = await generate(client, style="a")
    _, b = await generate(client, style="b")
    assert a_info["style_sha256"] == sha256_file(adapters["a"])

    # Change a's weights (to b's), replaced atomically as the README advises.
    shutil.copyfile(adapters["b"], folder / "a.tmp")
    os.replace(folder / "a.tmp", folder / "a.safetensors")
    changed_info, changed = await generate(client, style="a")
    assert changed_info["style_sha256"] == sha256_file(adapters["b"])
    assert pixels(changed) == pixels(b) and pixels(changed) != pixels(a)
    assert engine.styles.loaded["a"] == sha256_file(adapters["b"]), "the old adapter was not replaced"

    # A manifest-only change is seen at once and reloads nothing.
    add_style(folder, "a", None, title="Renamed")
    listing = await client.call_tool("list_styles", {})
    assert any(s["title"] == "Renamed" for s in listing.structured_content["styles"])

    (folder / "a.toml").unlink()
    assert "a" not in await style_names(client)
    assert "unknown style 'a'" in await error_text(client, style="a")
    await generate(client, style="b")  # the next generation unloads the removed style's adapter
    assert set(engine.styles.loaded) == {"b"}
    b_style = service.styles.refresh().styles["b"]
    assert pipe.get_list_adapters()["transformer"] == [adapter_name(b_style)]

    assert await service.runner.engine() is engine and engine.pipe is pipe, "the base pipeline was reloaded"


async def test_least_recently_used_adapter_is_unloaded_past_the_cap(
    make_settings: Callable[..., Settings], adapters: dict[str, Path]
) -> None:
    settings = make_settings(max_loaded_styles=1)
    for name in ("a", "b"):
        add_style(settings.resolved_styles_dir, name, adapters[name])
    async with Noisett(settings) as service, Client(_server(service)) as client:
        _, a = await generate(client, style="a")
        _, b = await generate(client, style="b")
        engine = await service.runner.engine()
        assert set(engine.styles.loaded) == {"b"}
        _, a_again = await generate(client, style="a")
        assert set(engine.styles.loaded) == {"a"}
        assert pixels(a_again) == pixels(a) != pixels(b)


def _server(service: Noisett) -> Any:
    from noisett_mcp.server import build_server

    return build_server(service)


async def test_hub_weights_come_from_the_hub_cache(
    client: Client, settings: Settings, adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no machine here reaches a hub
    repo = f"noisett-tests/brand-{uuid.uuid4().hex[:8]}"
    commit = "0" * 40
    cached = settings.resolved_model_cache_dir / f"models--{repo.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(commit)
    (cached / "snapshots" / commit).mkdir(parents=True)
    shutil.copyfile(adapters["a"], cached / "snapshots" / commit / "brand.safetensors")
    folder = settings.resolved_styles_dir
    add_style(folder, "a", adapters["a"])
    add_style(folder, "from-hub", None, weights=repo, weight_name="brand.safetensors")
    add_style(folder, "not-cached", None, weights=f"{repo}-x", weight_name="brand.safetensors")

    hub_info, hub = await generate(client, style="from-hub")
    _, local = await generate(client, style="a")
    assert hub_info["style_sha256"] == sha256_file(adapters["a"])
    assert pixels(hub) == pixels(local)

    assert "not-cached" in await style_names(client)  # offered; fetched on first use
    result = await client.call_tool("generate_image", {"prompt": PROMPT, "steps": 2, "style": "not-cached"})
    assert result.is_error and "could not download brand.safetensors" in result.content[0].text
    assert "not-cached" in await style_names(client), "a failed download is not the style's fault"


def _cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_cache: Path, *argv: str) -> int:
    monkeypatch.setenv("NOISETT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NOISETT_MODEL_CACHE_DIR", str(model_cache))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(argv))
    return int(exit_info.value.code or 0)


def test_styles_check_reports_every_manifest_and_fails_on_a_refused_one(
    tmp_path: Path,
    model_cache: Path,
    adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "styles"
    add_style(folder, "good", adapters["a"], trigger_words=["good"], prompt_template="{prompt}, good")
    add_style(folder, "no-trigger", adapters["b"], trigger_words=["zap"])
    add_style(folder, "alien", adapters["alien"])
    add_style(folder, "big-model", adapters["a"], base_models=["HiDream-ai/HiDream-I1-Fast"])
    (folder / "broken.toml").write_text("name = [")

    assert _cli(monkeypatch, tmp_path, model_cache, "styles", "check", str(folder), "--model", "demo") == 1
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if ".toml:" in line}
    assert lines["good.toml:"].startswith("ok") and sha256_file(adapters["a"])[:16] in lines["good.toml:"]
    assert lines["no-trigger.toml:"].startswith("warning") and "zap" in lines["no-trigger.toml:"]
    assert lines["alien.toml:"].startswith("refused") and "match no module" in lines["alien.toml:"]
    assert lines["broken.toml:"].startswith("refused") and "malformed TOML" in lines["broken.toml:"]
    assert lines["big-model.toml:"].startswith("other") and "for other models" in lines["big-model.toml:"]

    # Without the key check, only the broken manifest is refused.
    assert (
        _cli(
            monkeypatch, tmp_path, model_cache, "styles", "check", str(folder), "--model", "demo", "--no-keys"
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "ok       alien.toml" in out and "1 refused" in out
    (folder / "broken.toml").unlink()
    (folder / "alien.toml").unlink()
    assert _cli(monkeypatch, tmp_path, model_cache, "styles", "check", str(folder), "--model", "demo") == 0


def test_quickstart_generates_with_a_built_in_demo_style(
    tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "generate",
        "a lighthouse",
        "--model",
        "demo",
        "--style",
        "demo-flat",
        "--steps",
        "2",
        "--seed",
        "1",
    ]
    assert _cli(monkeypatch, tmp_path, model_cache, *argv) == 0
    path = Path(capsys.readouterr().out.split()[0])
    meta = images.read_metadata(path.read_bytes())
    assert meta["style"] == "demo-flat"
    assert isinstance(prompt := meta["prompt"], str) and prompt.startswith("a lighthouse, flat vector")
    assert meta["style_sha256"] == sha256_file(DEMO_STYLES_DIR / "demo-flat.safetensors")


def test_listing_styles_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from noisett_mcp.config import Settings; "
        "from noisett_mcp.styles.catalog import StyleCatalog; "
        f"view = StyleCatalog(Settings(model='demo', data_dir={str(tmp_path)!r})).refresh(); "
        "assert set(view.styles) == {'demo-flat', 'demo-grain'}, view; "
        "assert all(s.sha256 for s in view.styles.values()); "
        "heavy = {'torch', 'diffusers', 'transformers', 'peft'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
