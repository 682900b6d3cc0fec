"""The three tools through a real MCP client session (in memory), on the demo model."""

from __future__ import annotations

import base64
import io
import json

import pytest
from mcp import Client
from PIL import Image

from noisett_mcp import images

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
    assert {"torch", "diffusers", "transformers", "noisett_mcp"} <= set(meta["versions"])
    assert json.loads(Image.open(io.BytesIO(data)).info[images.METADATA_KEY])["seed"] == 11
