"""What a remote client learns about the server's disk (issue 22, finding 9), over real streamable HTTP on
127.0.0.1 with the local image store: no `file:` URL (it names a server path and opens nothing on the
client's machine), and a style the engine refuses is named relative to the styles folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import safetensors.torch
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR
from tests.support import add_style, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


@pytest.fixture
async def remote(settings: Settings) -> AsyncIterator[Client]:
    async with (
        serve_asgi(create_app(Noisett(settings))) as base,
        Client(streamable_http_client(f"{base}/mcp")) as client,
    ):
        yield client


def alien_style(folder: Path) -> None:
    """A style whose adapter names modules the transformer does not have: the engine refuses it."""
    tensors = safetensors.torch.load_file(DEMO_STYLES_DIR / "demo-flat.safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(
        {k.replace(".attn1.", ".attn9."): v.clone() for k, v in tensors.items()}, folder / "alien.safetensors"
    )
    add_style(folder, "alien", None)


async def test_remote_clients_get_no_file_urls_and_no_server_paths(
    remote: Client, settings: Settings
) -> None:
    made = await remote.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 1, "seed": 1})
    assert not made.is_error, made.content[0].text
    (info,) = made.structured_content["images"]
    got = await remote.call_tool("get_image", {"image_id": info["id"]})
    assert not got.is_error, got.content[0].text
    for image in (info, got.structured_content["image"]):
        assert not (image["url"] or "").startswith("file:"), image["url"]

    alien_style(settings.resolved_styles_dir)
    refused = await remote.call_tool(
        "generate_image", {"prompt": "a lighthouse", "steps": 1, "style": "alien"}
    )
    assert refused.is_error
    message = refused.content[0].text
    assert "alien.toml" in message, message
    assert str(settings.data_dir) not in message and str(settings.resolved_styles_dir) not in message, message


async def test_stdio_clients_still_get_the_file_url(client: Client) -> None:
    """In memory, as over stdio: the client is the user on this computer, and the file URL opens."""
    made = await client.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 1, "seed": 1})
    assert not made.is_error, made.content[0].text
    assert made.structured_content["images"][0]["url"].startswith("file:")
