"""`list_styles`: the brand styles, with what each is for and its defaults."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from mcp.server.mcpserver import MCPServer
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
