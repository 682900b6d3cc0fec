"""Prompts for brand work, which Claude Desktop and VS Code offer as slash commands: a hero image, a
social post and a product shot. Each takes a subject, a style (completed from the styles that exist)
and an aspect ratio, and expands to a message that leads the assistant through list_styles and
generate_image."""

# No `from __future__ import annotations` here: the SDK reads the signatures at registration.

from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, CompletionArgument, PromptReference
from pydantic import Field

from noisett_mcp.schemas import ASPECT_RATIOS, AspectRatio
from noisett_mcp.service import Noisett

MAX_COMPLETIONS = 100  # the spec's cap on values in one completion result


@dataclass(frozen=True)
class BrandPrompt:
    name: str
    title: str
    description: str
    aspect_ratio: AspectRatio
    brief: str  # what the image is for, as the assistant should read it


PROMPTS = (
    BrandPrompt(
        "hero_image",
        "Hero image",
        "A wide banner image for the top of a web page or a campaign, in a brand style.",
        "16:9",
        "a hero image: a wide banner at the top of a web page, with calm space on one side for a headline",
    ),
    BrandPrompt(
        "social_post",
        "Social post",
        "An eye-catching image for a social media post, in a brand style.",
        "1:1",
        "a social media post: one clear subject that reads at thumbnail size, bold and uncluttered",
    ),
    BrandPrompt(
        "product_shot",
        "Product shot",
        "A clean studio photo of a product, in a brand style.",
        "4:3",
        "a product shot: the product alone on a clean background, evenly lit, sharp, nothing distracting",
    ),
)

Subject = Annotated[
    str, Field(description="What the image shows: the product, scene or idea, in plain words.")
]
StyleArg = Annotated[
    str, Field(description="A brand style from list_styles; leave empty to let the assistant choose.")
]


def expand(prompt: BrandPrompt, subject: str, style: str, aspect_ratio: str) -> str:
    """The message a prompt expands to: what to make, then the two tool calls that make it."""
    style_step = (
        f"Call list_styles and check that the style `{style}` exists; if it does not, pick the closest."
        if style
        else "Call list_styles and pick the style that fits best (or `none` for the base model)."
    )
    return (
        f"Make {prompt.brief}. Subject: {subject}.\n\n"
        f"1. {style_step}\n"
        f"2. Call generate_image with a prompt that describes the subject, setting, composition and mood "
        f"for this use, the chosen style, and aspect_ratio `{aspect_ratio}`.\n"
        "3. Show the preview, and give the image id so that get_image can fetch the full image."
    )


def register(mcp: MCPServer) -> None:
    """Each brand prompt, with its own aspect ratio as the default (the prompts are data, not code)."""
    for prompt in PROMPTS:
        _register_prompt(mcp, prompt)


async def complete_style(service: Noisett, ref: Any, argument: CompletionArgument) -> Completion | None:
    """Completes a prompt's `style` argument from the styles that exist now."""
    if not isinstance(ref, PromptReference) or argument.name != "style":
        return None
    names = [style.name for style in await service.list_styles()]
    typed = argument.value.lower()
    matches = [name for name in names if name.lower().startswith(typed)]
    return Completion(
        values=matches[:MAX_COMPLETIONS], total=len(matches), has_more=len(matches) > MAX_COMPLETIONS
    )


def _register_prompt(mcp: MCPServer, prompt: BrandPrompt) -> None:
    # Prompt arguments arrive as text: checked here, so that a bad one gets a message that says what is
    # allowed (the SDK reports a failed validation only as "Error rendering prompt").
    RatioArg = Annotated[
        str,
        Field(
            description=f"The image's shape, width:height ({', '.join(ASPECT_RATIOS)}); "
            f"{prompt.aspect_ratio} if left empty."
        ),
    ]

    def render(subject: Subject, style: StyleArg = "", aspect_ratio: RatioArg = "") -> str:
        ratio = aspect_ratio.strip() or prompt.aspect_ratio
        if ratio not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio {ratio!r} is not offered; use one of {', '.join(ASPECT_RATIOS)}")
        if not subject.strip():
            raise ValueError("subject is empty: say what the image shows")
        return expand(prompt, subject.strip(), style.strip(), ratio)

    mcp.prompt(name=prompt.name, title=prompt.title, description=prompt.description)(render)
