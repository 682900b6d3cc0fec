"""Tool results that clients can hold: structured content, a ResourceLink per image and small
previews, well under Claude Desktop's 1 MiB cap."""

from __future__ import annotations

import base64
from typing import Any

import anyio
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel

from noisett_mcp import images
from noisett_mcp.schemas import GenerateImageResult, ImageInfo
from noisett_mcp.service import ImageView, Noisett


async def generation_result(service: Noisett, views: list[ImageView]) -> CallToolResult:
    infos = [view.info for view in views]
    failed = [info for info in infos if info.status in ("failed", "cancelled")]
    if failed:
        return error(f"Generation {failed[0].status}: {failed[0].error or 'no reason recorded'}.")
    content: list[Any] = []
    pending = [info for info in infos if info.status != "done"]
    if pending:
        message = (
            f"{len(pending)} of {len(infos)} image(s) still {pending[0].status}. This is normal for slow "
            "generations: call get_image with each id in a little while to collect them."
        )
    else:
        message = f"Made {len(infos)} image(s). Previews are attached; get_image returns the full image."
    if (first := infos[0]).source_fit is not None:  # image-to-image: say how the source was used
        message += f" Started from the source at strength {first.strength:g}: {first.source_fit}."
    content.append(TextContent(type="text", text=message))
    for info in infos:
        if info.status == "done":
            stored = await service.load_image(info.id)
            small = await anyio.to_thread.run_sync(images.preview, stored.data)
            content.append(ImageContent(type="image", data=b64(small), mime_type="image/jpeg"))
        content.append(link(info))
    return result(GenerateImageResult(images=infos, message=message), content)


def link(info: ImageInfo) -> ResourceLink:
    return ResourceLink(
        type="resource_link",
        uri=info.uri,
        name=f"{info.id}{images.FORMATS[info.format].extension}",
        title=f"Image {info.id} ({info.status})",
        description=f"{info.width}×{info.height}, seed {info.seed}: {info.prompt[:120]}",
        mime_type=images.FORMATS[info.format].mime_type,
    )


def result(model: BaseModel, content: list[Any]) -> CallToolResult:
    return CallToolResult(content=content, structured_content=model.model_dump(mode="json"))


def error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
