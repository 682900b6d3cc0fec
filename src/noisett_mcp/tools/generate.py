"""`generate_image`: queue a generation, wait for it up to the server's limit with progress on every
denoising step, and return ids, parameters and previews (or handles to collect later)."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from noisett_mcp import sources
from noisett_mcp.auth.caller import current_caller
from noisett_mcp.errors import RequestError
from noisett_mcp.schemas import (
    AspectRatio,
    Count,
    Format,
    GenerateImageResult,
    GenerationRequest,
    Guidance,
    NegativePrompt,
    Prompt,
    Seed,
    SourceImageId,
    Steps,
    Strength,
    StyleName,
    StyleStrength,
    aspect_ratio_help,
)
from noisett_mcp.surface import Surface, surface
from noisett_mcp.tools.results import generation_result

Wait = Annotated[
    bool, Field(description="Wait for the images (up to the server's limit). false: return ids at once.")
]


SourceImage = Annotated[
    str | None,
    Field(
        description="Start from this picture instead of noise: a PNG, JPEG or WebP file, base64-encoded "
        f"(at most {sources.MAX_SOURCE_BYTES // 2**20} MiB). It is scaled and centre-cropped to the "
        "aspect ratio's size.",
    ),
]
SourcePath = Annotated[
    str | None,
    Field(
        max_length=4096,
        description="Only when this server runs on your computer (stdio): the path of a PNG, JPEG or WebP "
        "file to start from, instead of source_image.",
    ),
]


ANNOTATIONS = ToolAnnotations(
    title="Generate image",
    readOnlyHint=False,
    destructiveHint=False,
    idempotentHint=False,
    openWorldHint=False,
)


async def generate_image(
    ctx: Context[Surface, Any],
    prompt: Prompt,
    negative_prompt: NegativePrompt = "",
    style: StyleName = "none",
    style_strength: StyleStrength = None,
    aspect_ratio: AspectRatio = "1:1",
    seed: Seed = None,
    steps: Steps = None,
    guidance: Guidance = None,
    count: Count = 1,
    format: Format = "png",
    source_image_id: SourceImageId = None,
    source_image: SourceImage = None,
    source_path: SourcePath = None,
    strength: Strength = None,
    wait: Wait = True,
) -> Annotated[CallToolResult, GenerateImageResult]:
    """Generate images from a text prompt, optionally in a brand style, optionally starting from an
    image (source_image_id, source_image or source_path) to restyle it or make variations of it.

    Returns each image's id, seed and parameters, with a small preview. Call get_image with an id
    for the full image, or to collect an image still queued or running."""
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        style=style,
        style_strength=style_strength,
        aspect_ratio=aspect_ratio,
        seed=seed,
        steps=steps,
        guidance=guidance,
        count=count,
        format=format,
        source_image_id=source_image_id,
        strength=strength,
    )
    service, local_files = surface(ctx).service, surface(ctx).local_files
    owner = current_caller().owner
    given = await _source_bytes(source_image, source_path, local_files)
    job = await service.submit(request, owner, given)
    if wait:
        # Tracked while it waits: a cancel notification that reaches another transport (stateless
        # HTTP) or another front finds the job by caller and request id (jobs/calls.py).
        async with service.track_call(owner, ctx.request_id, job):
            await service.wait(job, service.settings.wait_seconds, ctx.report_progress)
    views = [await service.view(image_id, owner) for image_id in job.image_ids]
    return await generation_result(service, views)


def for_geometry(geometry: tuple[int, int]) -> Callable[..., Any]:
    """generate_image as the server registers it: its aspect_ratio described with the sizes this model
    renders (known from its geometry before it loads). The body is generate_image's own."""
    rendered = Annotated[AspectRatio, Field(description=aspect_ratio_help(*geometry))]
    signature = inspect.signature(generate_image)
    parameters = [
        parameter.replace(annotation=rendered) if parameter.name == "aspect_ratio" else parameter
        for parameter in signature.parameters.values()
    ]

    @functools.wraps(generate_image)
    async def described(*args: Any, **kwargs: Any) -> CallToolResult:
        return await generate_image(*args, **kwargs)

    described.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return described


async def _source_bytes(source_image: str | None, source_path: str | None, local_files: bool) -> bytes | None:
    if source_image is not None and source_path is not None:
        raise RequestError("give one source image: source_image or source_path, not both")
    if source_path is not None:
        if not local_files:
            raise RequestError(
                "source_path works only when the server runs on your computer (stdio); over HTTP, send "
                "the image itself as source_image (base64) or name one of your images by source_image_id"
            )
        return await anyio.to_thread.run_sync(sources.from_path, source_path)
    return None if source_image is None else sources.from_base64(source_image)
