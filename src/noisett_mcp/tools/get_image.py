"""`get_image`: the image itself when it is done (or the largest copy that fits inline, with a link to
the full one), or its progress while it is queued or running."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from noisett_mcp import images
from noisett_mcp.auth.caller import current_caller
from noisett_mcp.schemas import GetImageResult
from noisett_mcp.service import ImageView, Noisett
from noisett_mcp.surface import Surface, surface
from noisett_mcp.tools.results import b64, error, link, result

ImageId = Annotated[
    str, Field(max_length=64, description="An image id returned by generate_image (32 hex characters).")
]


ANNOTATIONS = ToolAnnotations(title="Get image", readOnlyHint=True, openWorldHint=False)


async def get_image(
    ctx: Context[Surface, Any], image_id: ImageId
) -> Annotated[CallToolResult, GetImageResult]:
    """Get a generated image by id: the image itself when it is done, or its progress while it is
    queued or running (then call again later)."""
    service = surface(ctx).service
    view = await service.view(image_id, current_caller().owner)
    if view.info.status in ("failed", "cancelled"):
        return error(f"Image {view.info.id} {view.info.status}: {view.info.error or 'no reason recorded'}.")
    if view.info.status != "done":
        return _progress(view)
    return await _finished(service, view)


def _progress(view: ImageView) -> CallToolResult:
    info = view.info
    eta = f", about {max(1, round(view.eta_seconds))} s left" if view.eta_seconds else ""
    position = f", {view.queue_position} job(s) ahead" if view.queue_position else ""
    message = (
        f"Image {info.id} is {info.status} ({info.progress:.0%} done{position}{eta}). "
        "Call get_image again later to collect it."
    )
    progress = GetImageResult(
        image=info,
        progress_percent=round(info.progress * 100, 1),
        eta_seconds=view.eta_seconds,
        queue_position=view.queue_position,
        message=message,
    )
    return result(progress, [TextContent(type="text", text=message)])


async def _finished(service: Noisett, view: ImageView) -> CallToolResult:
    info = view.info
    stored = await service.load_image(info.id)
    inline = await anyio.to_thread.run_sync(images.fit_inline, stored.data, stored.mime_type)
    if inline.is_full:
        message = f"Image {info.id}: {info.width}×{info.height} {info.format}, seed {info.seed}."
    else:
        message = (
            f"Image {info.id} ({info.width}×{info.height} {info.format}, {len(stored.data):,} bytes) "
            f"is too large to send inline; attached is a {inline.description}. The full image is at "
            f"{info.url or info.uri}."
        )
    done = GetImageResult(image=info, progress_percent=100.0, inline=inline.description, message=message)
    return result(
        done,
        [
            TextContent(type="text", text=message),
            ImageContent(type="image", data=b64(inline.data), mime_type=inline.mime_type),
            link(info),
        ],
    )
