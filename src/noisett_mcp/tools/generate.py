"""`generate_image`: queue a generation, wait for it up to the server's limit with progress on every
denoising step, and return ids, parameters and previews (or handles to collect later)."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from noisett_mcp.auth.caller import current_caller
from noisett_mcp.errors import NoisettError
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
    Steps,
    StyleName,
    StyleStrength,
    aspect_ratio_help,
)
from noisett_mcp.service import Noisett
from noisett_mcp.tools import ToolRegistry, description
from noisett_mcp.tools.results import generation_result

Wait = Annotated[
    bool, Field(description="Wait for the images (up to the server's limit). false: return ids at once.")
]


def register(mcp: ToolRegistry, service: Noisett) -> None:
    # The aspect ratios' sizes depend on the model's geometry, known before it loads.
    RenderedAspectRatio = Annotated[
        AspectRatio, Field(description=aspect_ratio_help(*service.render_geometry()))
    ]

    async def generate_image(
        ctx: Context,
        prompt: Prompt,
        negative_prompt: NegativePrompt = "",
        style: StyleName = "none",
        style_strength: StyleStrength = None,
        aspect_ratio: RenderedAspectRatio = "1:1",
        seed: Seed = None,
        steps: Steps = None,
        guidance: Guidance = None,
        count: Count = 1,
        format: Format = "png",
        wait: Wait = True,
    ) -> Annotated[CallToolResult, GenerateImageResult]:
        """Generate images from a text prompt, optionally in a brand style.

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
        )
        owner = current_caller().owner
        try:
            job = await service.submit(request, owner)
        except NoisettError as exc:
            raise ToolError(str(exc)) from exc
        if wait:
            # Tracked while it waits: a cancel notification that reaches another transport (stateless
            # HTTP) or another front finds the job by caller and request id (jobs/calls.py).
            async with service.calls.track(owner, ctx.request_id, job):
                await service.wait(job, service.settings.wait_seconds, ctx.report_progress)
        views = [await service.view(image_id, owner) for image_id in job.image_ids]
        return await generation_result(service, views)

    mcp.add_tool(
        generate_image,
        title="Generate image",
        description=description(generate_image),
        annotations=ToolAnnotations(
            title="Generate image",
            readOnlyHint=False,
            destructiveHint=False,
            idempotentHint=False,
            openWorldHint=False,
        ),
    )
