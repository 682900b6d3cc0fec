"""The MCP surface: three tools and the image:// resource. It validates input, calls the service, and
shapes results that clients can hold (well under Claude Desktop's 1 MiB cap)."""

# No `from __future__ import annotations` here: the tool signatures are evaluated at registration.

import base64
import dataclasses
import json
from collections.abc import Iterable
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from noisett_mcp import __version__, images
from noisett_mcp.audit import audit_requests
from noisett_mcp.auth import current_caller
from noisett_mcp.models import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    AspectRatio,
    GenerateImageResult,
    GetImageResult,
    ImageFormat,
    ImageInfo,
    ListStylesResult,
    aspect_ratio_help,
)
from noisett_mcp.service import ImageNotFound, ImageView, Noisett, QueueFull, RequestError
from noisett_mcp.storage import InvalidImageId, StorageUnavailable

INSTRUCTIONS = """\
Noisett makes images on the company's own GPU, in brand styles.
Call list_styles to see the styles, then generate_image. Each image comes back with a small preview
and an id; call get_image with the id for the full image. A slow generation returns its ids with
status queued or running: call get_image later to collect the image."""


class _NoisettMCP(MCPServer):
    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        """Label image bytes with their real type (a template's MIME type is fixed at registration)."""
        results = await super().read_resource(uri, context)
        if not isinstance(results, Iterable):
            return results
        return [dataclasses.replace(r, mime_type=_sniff(r.content)) for r in results]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        """Argument errors in a form an assistant can act on: one line per field, without pydantic's links."""
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_url=False)
            )
            raise ToolError(f"Invalid arguments for {name}: {problems}.") from exc.__cause__


def _sniff(content: str | bytes) -> str:
    if isinstance(content, str):
        return "application/json"
    if content.startswith(b"\x89PNG"):
        return "image/png"
    if content.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if content[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def build_server(service: Noisett) -> MCPServer:
    """The MCP server for a running service."""
    mcp = _NoisettMCP(
        name="noisett",
        title="Noisett",
        description="Brand-style image generation on your own GPU (HiDream-I1 + LoRA styles).",
        instructions=INSTRUCTIONS,
        version=__version__,
    )
    side, multiple = service.render_geometry()

    async def preload_after_tool_listing(ctx: Any, call_next: Any) -> Any:
        # Clients list tools right after the handshake: loading the model from then on never slows
        # `initialize` (importing torch alone takes seconds).
        result = await call_next(ctx)
        if ctx.method == "tools/list":
            service.start_preload()
        return result

    mcp.middleware.append(preload_after_tool_listing)
    mcp.middleware.append(audit_requests)

    @mcp.tool(
        title="Generate image",
        annotations=ToolAnnotations(
            title="Generate image",
            readOnlyHint=False,
            destructiveHint=False,
            idempotentHint=False,
            openWorldHint=False,
        ),
    )
    async def generate_image(
        ctx: Context,
        prompt: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_PROMPT_CHARS,
                description="What the image shows: subject, setting, composition, mood. Plain language.",
            ),
        ],
        negative_prompt: Annotated[
            str, Field(max_length=MAX_PROMPT_CHARS, description="What the image must not show.")
        ] = "",
        style: Annotated[
            str,
            Field(max_length=64, description="A brand style from list_styles; `none` for the base model."),
        ] = "none",
        style_strength: Annotated[
            float | None,
            Field(
                ge=0,
                le=2,
                description="How strongly the style applies, 0 (not at all) to 2; omit for the style's "
                "default strength (list_styles shows it).",
            ),
        ] = None,
        aspect_ratio: Annotated[AspectRatio, Field(description=aspect_ratio_help(side, multiple))] = "1:1",
        seed: Annotated[
            int | None,
            Field(ge=0, le=MAX_SEED, description="Seed for reproducible results; omit for a random one."),
        ] = None,
        steps: Annotated[
            int | None,
            Field(ge=1, le=100, description="Denoising steps; omit for the model's default (more: slower)."),
        ] = None,
        guidance: Annotated[
            float | None,
            Field(ge=0, le=20, description="Prompt adherence (CFG scale); omit for the model's default."),
        ] = None,
        count: Annotated[int, Field(ge=1, le=4, description="How many images, each with its own seed.")] = 1,
        format: Annotated[ImageFormat, Field(description="File format of the full image.")] = "png",
        wait: Annotated[
            bool,
            Field(description="Wait for the images (up to the server's limit). false: return ids at once."),
        ] = True,
    ) -> Annotated[CallToolResult, GenerateImageResult]:
        """Generate images from a text prompt, optionally in a brand style.

        Returns each image's id, seed and parameters, with a small preview. Call get_image with an id
        for the full image, or to collect an image still queued or running."""
        owner = current_caller().owner
        try:
            job = await service.submit(
                prompt,
                negative_prompt=negative_prompt,
                style=style,
                style_strength=style_strength,
                aspect_ratio=aspect_ratio,
                seed=seed,
                steps=steps,
                guidance=guidance,
                count=count,
                format=format,
                owner=owner,
            )
        except (RequestError, QueueFull) as exc:
            raise ToolError(str(exc)) from exc
        if wait:
            await service.wait(job, service.settings.wait_seconds, ctx.report_progress)
        views = [await service.view(image_id, owner) for image_id in job.image_ids]
        return await _generation_result(service, views)

    @mcp.tool(
        title="List brand styles",
        annotations=ToolAnnotations(title="List brand styles", readOnlyHint=True, openWorldHint=False),
    )
    async def list_styles() -> ListStylesResult:
        """List the brand styles available for generate_image, with what each is for and its defaults."""
        return ListStylesResult(styles=await service.list_styles())

    @mcp.tool(
        title="Get image",
        annotations=ToolAnnotations(title="Get image", readOnlyHint=True, openWorldHint=False),
    )
    async def get_image(
        image_id: Annotated[
            str,
            Field(max_length=64, description="An image id returned by generate_image (32 hex characters)."),
        ],
    ) -> Annotated[CallToolResult, GetImageResult]:
        """Get a generated image by id: the image itself when it is done, or its progress while it is
        queued or running (then call again later)."""
        try:
            view = await service.view(image_id, current_caller().owner)
        except (InvalidImageId, ImageNotFound, StorageUnavailable) as exc:
            raise ToolError(str(exc)) from exc
        info = view.info
        if info.status in ("failed", "cancelled"):
            return _error(f"Image {info.id} {info.status}: {info.error or 'no reason recorded'}.")
        if info.status != "done":
            eta = f", about {max(1, round(view.eta_seconds))} s left" if view.eta_seconds else ""
            position = f", {view.queue_position} job(s) ahead" if view.queue_position else ""
            message = (
                f"Image {info.id} is {info.status} ({info.progress:.0%} done{position}{eta}). "
                "Call get_image again later to collect it."
            )
            result = GetImageResult(
                image=info,
                progress_percent=round(info.progress * 100, 1),
                eta_seconds=view.eta_seconds,
                queue_position=view.queue_position,
                message=message,
            )
            return _result(result, [TextContent(type="text", text=message)])
        try:
            stored = await service.load_image(info.id)
        except (ImageNotFound, StorageUnavailable) as exc:
            raise ToolError(str(exc)) from exc
        inline = await anyio.to_thread.run_sync(images.fit_inline, stored.data, stored.mime_type)
        if inline.is_full:
            message = f"Image {info.id}: {info.width}×{info.height} {info.format}, seed {info.seed}."
        else:
            message = (
                f"Image {info.id} ({info.width}×{info.height} {info.format}, {len(stored.data):,} bytes) "
                f"is too large to send inline; attached is a {inline.description}. The full image is at "
                f"{info.url or info.uri}."
            )
        result = GetImageResult(
            image=info, progress_percent=100.0, inline=inline.description, message=message
        )
        return _result(
            result,
            [
                TextContent(type="text", text=message),
                ImageContent(type="image", data=_b64(inline.data), mime_type=inline.mime_type),
                _link(info),
            ],
        )

    @mcp.resource(
        "image://{image_id}",
        name="image",
        title="Generated image",
        description="The full generated image, in the format it was made in; a JSON status while unfinished.",
        mime_type="image/png",
    )
    async def image_resource(image_id: str) -> bytes | str:
        try:
            view = await service.view(image_id, current_caller().owner)
            if view.info.status == "done":
                return (await service.load_image(image_id)).data
        except (InvalidImageId, ImageNotFound, StorageUnavailable) as exc:
            raise ResourceError(str(exc)) from exc
        return json.dumps(
            {
                "status": view.info.status,
                "progress_percent": round(view.info.progress * 100, 1),
                "eta_seconds": view.eta_seconds,
                "error": view.info.error,
            }
        )

    @mcp.resource(
        "style://{name}/preview",
        name="style-preview",
        title="Style preview",
        description="A sample image in a brand style; list_styles links it where a style has one.",
        mime_type="image/png",
    )
    async def style_preview(name: str) -> bytes:
        try:
            return await service.style_preview(name)
        except LookupError as exc:
            raise ResourceError(str(exc)) from exc

    return mcp


async def _generation_result(service: Noisett, views: list[ImageView]) -> CallToolResult:
    infos = [view.info for view in views]
    failed = [info for info in infos if info.status in ("failed", "cancelled")]
    if failed:
        return _error(f"Generation {failed[0].status}: {failed[0].error or 'no reason recorded'}.")
    content: list[Any] = []
    pending = [info for info in infos if info.status != "done"]
    if pending:
        message = (
            f"{len(pending)} of {len(infos)} image(s) still {pending[0].status}. This is normal for slow "
            "generations: call get_image with each id in a little while to collect them."
        )
    else:
        message = f"Made {len(infos)} image(s). Previews are attached; get_image returns the full image."
    content.append(TextContent(type="text", text=message))
    for info in infos:
        if info.status == "done":
            stored = await service.load_image(info.id)
            small = await anyio.to_thread.run_sync(images.preview, stored.data)
            content.append(ImageContent(type="image", data=_b64(small), mime_type="image/jpeg"))
        content.append(_link(info))
    return _result(GenerateImageResult(images=infos, message=message), content)


def _link(info: ImageInfo) -> ResourceLink:
    return ResourceLink(
        type="resource_link",
        uri=info.uri,
        name=f"{info.id}.{info.format}",
        title=f"Image {info.id} ({info.status})",
        description=f"{info.width}×{info.height}, seed {info.seed}: {info.prompt[:120]}",
        mime_type=images.MIME_TYPES[info.format],
    )


def _result(model: Any, content: list[Any]) -> CallToolResult:
    return CallToolResult(content=content, structured_content=model.model_dump(mode="json"))


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
