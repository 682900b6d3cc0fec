"""Bad input gets a clear error that says what is allowed, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

pytestmark = pytest.mark.anyio

GOOD: dict[str, Any] = {"prompt": "a lighthouse", "steps": 1}

# (tool, arguments, words the error must contain)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("generate_image", {}, ["prompt", "required"]),
    ("generate_image", {"prompt": ""}, ["prompt", "at least 1"]),
    ("generate_image", {"prompt": "   "}, ["prompt is empty", "2000"]),
    ("generate_image", {"prompt": "x" * 2001}, ["prompt", "at most 2000"]),
    ("generate_image", {"prompt": 42}, ["prompt", "string"]),
    ("generate_image", {**GOOD, "count": 0}, ["count", "greater than or equal to 1"]),
    ("generate_image", {**GOOD, "count": 9}, ["count", "less than or equal to 4"]),
    ("generate_image", {**GOOD, "count": "many"}, ["count", "integer"]),
    ("generate_image", {**GOOD, "steps": 0}, ["steps", "greater than or equal to 1"]),
    ("generate_image", {**GOOD, "steps": 101}, ["steps", "less than or equal to 100"]),
    ("generate_image", {**GOOD, "guidance": -1}, ["guidance", "greater than or equal to 0"]),
    ("generate_image", {**GOOD, "guidance": 21}, ["guidance", "less than or equal to 20"]),
    ("generate_image", {**GOOD, "seed": -1}, ["seed", "greater than or equal to 0"]),
    ("generate_image", {**GOOD, "seed": 2**32}, ["seed", "less than or equal to 4294967295"]),
    ("generate_image", {**GOOD, "aspect_ratio": "5:1"}, ["aspect_ratio", "'16:9'"]),
    ("generate_image", {**GOOD, "aspect_ratio": "1024x1024"}, ["aspect_ratio", "'1:1'"]),
    ("generate_image", {**GOOD, "format": "gif"}, ["format", "'png'", "'webp'", "'jpeg'"]),
    ("generate_image", {**GOOD, "style": "no-such-style"}, ["unknown style", "available styles", "none"]),
    ("generate_image", {**GOOD, "negative_prompt": "n" * 2001}, ["negative_prompt", "at most 2000"]),
    ("get_image", {}, ["image_id", "required"]),
    ("get_image", {"image_id": "../../etc/passwd"}, ["invalid image id", "32 lowercase hexadecimal"]),
    ("get_image", {"image_id": "/etc/passwd"}, ["invalid image id"]),
    ("get_image", {"image_id": "0123456789abcdef0123456789ABCDEF"}, ["invalid image id"]),
    ("get_image", {"image_id": "0123456789abcdef"}, ["invalid image id"]),
    ("get_image", {"image_id": "0123456789abcdef0123456789abcde\x00"}, ["invalid image id"]),
    ("get_image", {"image_id": "x" * 10_000}, ["image_id", "at most 64"]),
    ("get_image", {"image_id": 123}, ["image_id", "string"]),
    ("get_image", {"image_id": "0123456789abcdef0123456789abcdef"}, ["no image with id", "generate_image"]),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
async def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    client: Client, tool: str, arguments: dict, expected: list[str]
) -> None:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text = result.content[0].text
    for words in expected:
        assert words in text, f"{words!r} not in {text!r}"
    assert "pydantic.dev" not in text
    listing = await client.call_tool("list_styles", {})
    assert not listing.is_error


async def test_nothing_stored_is_lost_after_bad_input(client: Client) -> None:
    made = await client.call_tool("generate_image", GOOD)
    image_id = made.structured_content["images"][0]["id"]
    for tool, arguments, _ in CASES:
        await client.call_tool(tool, arguments)
    again = await client.call_tool("get_image", {"image_id": image_id})
    assert not again.is_error and again.structured_content["image"]["status"] == "done"


async def test_malformed_resource_uri_is_refused(client: Client) -> None:
    from mcp.shared.exceptions import MCPError

    for uri in (
        "image://..%2F..%2Fetc%2Fpasswd",
        "image://NOT-AN-ID",
        "image://0123456789abcdef0123456789abcdef",
    ):
        with pytest.raises(MCPError):
            await client.read_resource(uri)
    assert not (await client.call_tool("list_styles", {})).is_error
