"""The `style://{name}/preview` resource: a sample image in a brand style."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from noisett_mcp.service import Noisett


def register(mcp: MCPServer, service: Noisett) -> None:
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
