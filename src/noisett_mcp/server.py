"""The MCP server: registration only. The tools live under tools/, the resources under resources/,
the prompts under prompts/ and the App under app/; a NoisettError from any tool is translated here, once."""

# No `from __future__ import annotations` here: the SDK reads the signatures at registration.

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from mcp import MCPError
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import INVALID_PARAMS, Completion, CompletionArgument, ToolAnnotations
from pydantic import ValidationError

from noisett_mcp import __version__, images
from noisett_mcp.app import gallery
from noisett_mcp.audit import audit_requests
from noisett_mcp.errors import NoisettError
from noisett_mcp.prompts import brand
from noisett_mcp.resources import images as image_resources
from noisett_mcp.resources import styles as style_resources
from noisett_mcp.service import Noisett
from noisett_mcp.surface import Surface, lifespan
from noisett_mcp.tools import cancel, description, generate, get_image, styles

INSTRUCTIONS = """\
Noisett makes images on the company's own GPU, in brand styles.
Call list_styles to see the styles, then generate_image. Each image comes back with a small preview
and an id; call get_image with the id for the full image. A slow generation returns its ids with
status queued or running: call get_image later to collect the image."""


class NoisettMCP(MCPServer):
    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        """Label image bytes with their real type (a template's MIME type is fixed at registration)."""
        results = await super().read_resource(uri, context)
        if not isinstance(results, Iterable):
            return results  # a request for input (2026-07-28), not contents
        if str(uri).startswith("ui://"):
            return results  # the gallery keeps the Apps MIME type that hosts look for
        return [
            dataclasses.replace(r, mime_type=_mime_type(r.content))
            if isinstance(r, ReadResourceContents)
            else r
            for r in results
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        """Errors translated once, for every tool: a NoisettError is meant for the caller, so its message
        arrives as a tool error; any other exception stays the SDK's generic "Error executing tool".
        Argument errors come in a form an assistant can act on: one line per field, without pydantic's
        links. A validation error raised inside a tool is a crash, not the caller's mistake: it stays one."""
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            if isinstance(exc.__cause__, NoisettError):
                raise ToolError(f"Error executing tool {name}: {exc.__cause__}") from exc.__cause__
            raise
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_url=False)
            )
            raise ToolError(f"Invalid arguments for {name}: {problems}.") from exc.__cause__

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        """An unknown prompt or a bad argument is the caller's mistake (-32602), said plainly; the SDK
        would answer it as an internal error."""
        known = sorted(prompt.name for prompt in self._prompt_manager.list_prompts())
        if name not in known:
            raise MCPError(INVALID_PARAMS, f"no prompt named {name!r}; the prompts are {', '.join(known)}")
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as exc:  # the SDK wraps a failed render twice: the first cause says what was wrong
            cause: BaseException = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise MCPError(INVALID_PARAMS, f"prompt {name}: {cause}") from exc


def _mime_type(content: str | bytes) -> str:
    return "application/json" if isinstance(content, str) else images.sniff_mime_type(content)


def build_server(service: Noisett, *, local_files: bool = False) -> MCPServer:
    """The MCP server for a running service: registration only. `local_files`: it serves the user on
    their own computer (stdio), so generate_image may read a local source_path; never over HTTP."""
    # generate_image and get_image name the gallery (MCP Apps); the extension brings them to the server.
    apps = gallery.apps(service)
    for tool, annotations in (
        (generate.for_geometry(service.render_geometry()), generate.ANNOTATIONS),
        (get_image.get_image, get_image.ANNOTATIONS),
    ):
        apps.tool(resource_uri=gallery.GALLERY_URI, **_tool_details(tool, annotations))(tool)
    mcp = NoisettMCP(
        name="noisett",
        title="Noisett",
        description="Brand-style image generation on your own GPU (HiDream-I1 + LoRA styles).",
        instructions=INSTRUCTIONS,
        version=__version__,
        extensions=[apps],
        lifespan=lifespan(Surface(service, local_files)),
    )

    async def preload_after_tool_listing(ctx: Any, call_next: Any) -> Any:
        # Clients list tools right after the handshake: loading the model from then on never slows
        # `initialize` (importing torch alone takes seconds).
        result = await call_next(ctx)
        if ctx.method == "tools/list":
            service.start_preload()
        return result

    mcp.middleware.append(preload_after_tool_listing)
    mcp.middleware.append(audit_requests)
    mcp.add_tool(styles.list_styles, **_tool_details(styles.list_styles, styles.ANNOTATIONS))
    mcp.resource(
        style_resources.URI,
        name="style-preview",
        title="Style preview",
        description=style_resources.DESCRIPTION,
        mime_type="image/png",
    )(style_resources.style_preview)
    mcp.add_tool(cancel.cancel_image, **_tool_details(cancel.cancel_image, cancel.ANNOTATIONS))
    mcp.resource(
        image_resources.URI,
        name="image",
        title="Generated image",
        description=image_resources.DESCRIPTION,
        mime_type="image/png",
    )(image_resources.image_resource)
    brand.register(mcp)

    @mcp.completion()
    async def complete(ref: Any, argument: CompletionArgument, context: Any) -> Completion | None:
        return await brand.complete_style(service, ref, argument)

    return mcp


def _tool_details(tool: Callable[..., Any], annotations: ToolAnnotations) -> dict[str, Any]:
    """What a client shows of a tool besides its schema: the title, the docstring and the hints."""
    return {"title": annotations.title, "description": description(tool), "annotations": annotations}
