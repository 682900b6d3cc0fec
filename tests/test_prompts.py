"""Prompts for brand work (slash commands in Claude Desktop and VS Code), style completion, and the
standard error codes for unknown prompts and resources."""

from __future__ import annotations

import pytest
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS, PromptReference

pytestmark = pytest.mark.anyio

PROMPT_NAMES = ["hero_image", "product_shot", "social_post"]


async def test_each_prompt_takes_a_subject_a_style_and_an_aspect_ratio(client: Client) -> None:
    prompts = (await client.list_prompts()).prompts
    assert sorted(prompt.name for prompt in prompts) == PROMPT_NAMES
    for prompt in prompts:
        assert prompt.title and prompt.description
        arguments = {argument.name: argument for argument in prompt.arguments or []}
        assert list(arguments) == ["subject", "style", "aspect_ratio"]
        assert arguments["subject"].required and not arguments["style"].required
        assert all(argument.description for argument in arguments.values())


async def test_a_prompt_leads_through_list_styles_and_generate_image(client: Client) -> None:
    got = await client.get_prompt("hero_image", {"subject": "a red bicycle", "style": "demo-flat"})
    (message,) = got.messages
    text = message.content.text
    assert message.role == "user" and "a red bicycle" in text and "`demo-flat`" in text
    assert text.index("list_styles") < text.index("generate_image")
    assert "aspect_ratio `16:9`" in text  # the hero image's default shape
    square = await client.get_prompt("hero_image", {"subject": "a red bicycle", "aspect_ratio": "1:1"})
    assert "aspect_ratio `1:1`" in square.messages[0].content.text
    assert "pick the style that fits" in square.messages[0].content.text  # no style given


async def test_style_completes_from_the_styles_that_exist(client: Client) -> None:
    ref = PromptReference(type="ref/prompt", name="social_post")
    listed = (await client.call_tool("list_styles", {})).structured_content["styles"]
    styles = [style["name"] for style in listed]
    everything = await client.complete(ref, {"name": "style", "value": ""})
    assert everything.completion.values == styles
    demo = await client.complete(ref, {"name": "style", "value": "demo-g"})
    assert demo.completion.values == ["demo-grain"] and demo.completion.total == 1
    assert (await client.complete(ref, {"name": "subject", "value": "a"})).completion.values == []


@pytest.mark.parametrize(
    ("name", "arguments", "words"),
    [
        ("no_such_prompt", {}, ["no prompt named 'no_such_prompt'", "hero_image, product_shot, social_post"]),
        ("hero_image", {}, ["subject"]),
        ("hero_image", {"subject": "x", "aspect_ratio": "5:1"}, ["'5:1' is not offered", "16:9"]),
        ("hero_image", {"subject": "  "}, ["subject is empty"]),
    ],
)
async def test_a_bad_prompt_request_is_invalid_params_saying_what_is_allowed(
    client: Client, name: str, arguments: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(MCPError) as error:
        await client.get_prompt(name, arguments)
    assert error.value.error.code == INVALID_PARAMS
    assert all(word in error.value.error.message for word in words), error.value.error.message


@pytest.mark.parametrize(
    "uri", ["image://00000000000000000000000000000000", "image://not-an-id", "style://no-such-style/preview"]
)
async def test_an_unknown_or_malformed_resource_is_not_found(client: Client, uri: str) -> None:
    with pytest.raises(MCPError) as error:
        await client.read_resource(uri)
    assert error.value.error.code == INVALID_PARAMS  # SEP-2164: resource not found
