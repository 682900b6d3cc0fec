"""The `style://{name}/preview` resource: a sample image in a brand style."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from noisett_mcp.surface import Surface, surface

URI = "style://{name}/preview"
DESCRIPTION = "A sample image in a brand style; list_styles links it where a style has one."


async def style_preview(name: str, ctx: Context[Surface, Any]) -> bytes:
    try:
        return await surface(ctx).service.style_preview(name)
    except LookupError as exc:
        raise ResourceNotFoundError(str(exc)) from exc
