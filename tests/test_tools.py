"""The three tools through a real MCP client session (in memory), on the demo model."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
from mcp import Client
from PIL import Image

from noisett_mcp import images
from noisett_mcp.service import Noisett

pytestmark = pytest.mark.anyio


async def test_generate_image_returns_structured_content_link_and_preview(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a red fox", "steps": 2, "seed": 7})
    assert not result.is_error, result.content
    (image,) = result.structured_content["images"]
    assert image["status"] == "done"
    assert image["seed"] == 7 and image["steps"] == 2 and image["model"] == "demo"
    assert image["uri"] == f"image://{image['id']}"
    kinds = [block.type for block in result.content]
    assert kinds == ["text", "image", "resource_link"]
    preview = Image.open(io.BytesIO(base64.b64decode(result.content[1].data)))
    assert preview.format == "JPEG" and max(preview.size) <= 512
    assert result.content[2].uri == image["uri"]


async def test_full_image_is_a_png_whose_metadata_round_trips(client: Client) -> None:
    result = await client.call_tool(
        "generate_image", {"prompt": "a blue heron", "negative_prompt": "text", "steps": 2, "seed": 11}
    )
    image_id = result.structured_content["images"][0]["id"]
    resource = await client.read_resource(f"image://{image_id}")
    content = resource.contents[0]
    assert content.mime_type == "image/png"
    data = base64.b64decode(content.blob)
    assert Image.open(io.BytesIO(data)).format == "PNG"
    meta = images.read_metadata(data)
    assert meta["prompt"] == "a blue heron" and meta["negative_prompt"] == "text"
    assert meta["seed"] == 11 and meta["steps"] == 2 and meta["model"] == "demo"
    assert isinstance(versions := meta["versions"], dict)
    assert {"torch", "diffusers", "transformers", "noisett_mcp"} <= set(versions)
    assert json.loads(Image.open(io.BytesIO(data)).info[images.METADATA_KEY])["seed"] == 11


async def _pixels(client: Client, image_id: str) -> bytes:
    resource = await client.read_resource(f"image://{image_id}")
    with Image.open(io.BytesIO(base64.b64decode(resource.contents[0].blob))) as image:
        return image.convert("RGB").tobytes()


async def test_same_seed_gives_identical_pixels_and_another_seed_differs(client: Client) -> None:
    args = {"prompt": "a paper boat", "steps": 3, "guidance": 2.0, "negative_prompt": "blur"}
    ids = []
    for seed in (5, 5, 6):
        result = await client.call_tool("generate_image", {**args, "seed": seed})
        ids.append(result.structured_content["images"][0]["id"])
    first, again, other = [await _pixels(client, image_id) for image_id in ids]
    assert first == again
    assert first != other


async def test_progress_arrives_once_per_denoising_step(client: Client) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    result = await client.call_tool(
        "generate_image", {"prompt": "a kite", "steps": 5, "count": 2}, progress_callback=on_progress
    )
    assert not result.is_error
    step_updates = [u for u in updates if u[2] and "step" in u[2]]
    # NOISETT_BATCH=auto renders both images in one batch on a CPU: each step advances both.
    assert [u[0] for u in step_updates] == [2, 4, 6, 8, 10]
    assert step_updates[0][2] == "images 1–2/2, step 1/5"
    assert all(total == 10 for _, total, _ in updates)
    assert updates[-1][0] == 10
    values = [u[0] for u in updates]
    assert values == sorted(set(values)), "MCP progress must strictly increase"


async def test_count_four_result_stays_under_one_mebibyte(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "four tiles", "steps": 2, "count": 4})
    assert not result.is_error
    assert len(result.structured_content["images"]) == 4
    assert [block.type for block in result.content].count("image") == 4
    assert len(result.model_dump_json(by_alias=True).encode()) < 1_048_576
    seeds = [image["seed"] for image in result.structured_content["images"]]
    assert len(set(seeds)) == 4


async def test_get_image_sends_a_reduced_copy_of_a_full_size_image_under_the_cap(
    client: Client, service: Noisett
) -> None:
    # A 1024² image of pure noise is the worst case for compression (the real model's size).
    result = await client.call_tool("generate_image", {"prompt": "noise", "steps": 1})
    info = result.structured_content["images"][0]
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    data = images.encode(noise, "png", {"seed": info["seed"]})
    assert len(data) > 1_048_576
    record = await service.store.load_record(info["id"])
    assert record is not None
    await service.store.save_image(
        data, "image/png", record.model_copy(update={"width": 1024, "height": 1024})
    )

    got = await client.call_tool("get_image", {"image_id": info["id"]})
    assert not got.is_error
    assert len(got.model_dump_json(by_alias=True).encode()) < 1_048_576
    assert got.structured_content["inline"].startswith("JPEG copy")
    assert "too large to send inline" in got.content[0].text
    (image_block,) = [block for block in got.content if block.type == "image"]
    assert image_block.mime_type == "image/jpeg"
    full = await client.read_resource(f"image://{info['id']}")
    assert base64.b64decode(full.contents[0].blob) == data


async def test_get_image_returns_a_small_image_whole(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a pebble", "steps": 2, "format": "webp"})
    info = result.structured_content["images"][0]
    got = await client.call_tool("get_image", {"image_id": info["id"]})
    assert got.structured_content["inline"] == "full"
    (image_block,) = [block for block in got.content if block.type == "image"]
    assert image_block.mime_type == "image/webp"
    data = base64.b64decode(image_block.data)
    assert images.read_metadata(data)["prompt"] == "a pebble"
    resource = await client.read_resource(info["uri"])
    assert resource.contents[0].mime_type == "image/webp"


async def test_list_styles_offers_the_base_style(client: Client) -> None:
    result = await client.call_tool("list_styles", {})
    names = [style["name"] for style in result.structured_content["styles"]]
    assert "none" in names


async def test_tools_are_annotated_for_clients(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"generate_image", "list_styles", "get_image", "cancel_image"}
    assert tools["list_styles"].annotations.read_only_hint is True
    assert tools["get_image"].annotations.read_only_hint is True
    assert tools["cancel_image"].annotations.read_only_hint is False
    assert tools["cancel_image"].annotations.destructive_hint is True
    generate = tools["generate_image"]
    assert generate.annotations.read_only_hint is False
    assert generate.annotations.destructive_hint is False
    assert generate.output_schema is not None and "images" in generate.output_schema["properties"]
    for name, prop in generate.input_schema["properties"].items():
        assert prop.get("description"), f"generate_image.{name} has no description"
    assert "16:9 → 1360×768" in generate.input_schema["properties"]["aspect_ratio"]["description"] or (
        "16:9 → 84×48" in generate.input_schema["properties"]["aspect_ratio"]["description"]
    )
