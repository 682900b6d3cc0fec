"""`list_styles` and the `style://{name}/preview` resource."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.types import ToolAnnotations

from noisett_mcp.schemas import ListStylesResult
from noisett_mcp.service import Noisett
from noisett_mcp.tools import description


def register(mcp: MCPServer, service: Noisett) -> None:
    async def list_styles() -> ListStylesResult:
        """List the brand styles available for generate_image, with what each is for and its defaults."""
        return ListStylesResult(styles=await service.list_styles())

    mcp.add_tool(
        list_styles,
        title="List brand styles",
        description=description(list_styles),
        annotations=ToolAnnotations(title="List brand styles", readOnlyHint=True, openWorldHint=False),
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
            raise ResourceNotFoundError(str(exc)) from exc
