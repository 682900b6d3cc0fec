"""The HTTP body limit follows the source cap (issue 22, finding 7), over real streamable HTTP on 127.0.0.1:
a source image of exactly 10 MiB, base64-encoded in a real generate_image call, gets through (the SDK's
own default refused any body over 4 MiB with 413), and a body past the limit is refused with a message
that says what the limit is and why."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import zlib
from collections.abc import AsyncIterator

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from noisett_mcp.config import Settings
from noisett_mcp.http import MAX_BODY_BYTES, create_app
from noisett_mcp.service import Noisett
from noisett_mcp.sources import MAX_SOURCE_BYTES
from tests.support import serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


def png_of_exactly(size: int) -> bytes:
    """A valid PNG of random pixels, padded with a private ancillary chunk to exactly `size` bytes."""
    buffer = io.BytesIO()
    side = 1800  # 1800² × 3 bytes, stored uncompressed: about 9.3 MiB
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=0)
    png = buffer.getvalue()
    iend = png.rindex(b"IEND") - 4
    padding = size - len(png) - 12  # a chunk is length, type and CRC around its data
    assert padding >= 0
    chunk_type, data = b"prVt", b"\0" * padding
    chunk = (
        struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))
    )
    made = png[:iend] + chunk + png[iend:]
    assert len(made) == size
    return made


@pytest.fixture
async def base(settings: Settings) -> AsyncIterator[str]:
    async with serve_asgi(create_app(Noisett(settings))) as url:
        yield url


async def test_a_source_at_the_cap_gets_through_and_a_bigger_body_is_refused_clearly(base: str) -> None:
    png = png_of_exactly(MAX_SOURCE_BYTES)
    source = base64.b64encode(png).decode()
    arguments = {"prompt": "a harbour", "steps": 1, "source_image": source, "strength": 0.5}
    async with Client(streamable_http_client(f"{base}/mcp")) as client:
        made = await client.call_tool("generate_image", arguments)
    assert not made.is_error, made.content[0].text
    assert made.structured_content["images"][0]["source_sha256"] == hashlib.sha256(png).hexdigest()

    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=60) as http:
        refused = await http.post(f"{base}/mcp", content=b" " * (MAX_BODY_BYTES + 1), headers=headers)
    assert refused.status_code == 413
    assert f"the most this server accepts is {MAX_BODY_BYTES:,} bytes" in refused.text, refused.text
    assert "10 MiB" in refused.text, refused.text
