"""`list_styles`: the brand styles, with what each is for and its defaults."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations

from noisett_mcp.schemas import ListStylesResult
from noisett_mcp.surface import Surface, surface

ANNOTATIONS = ToolAnnotations(title="List brand styles", readOnlyHint=True, openWorldHint=False)


async def list_styles(ctx: Context[Surface, Any]) -> ListStylesResult:
    """List the brand styles available for generate_image, with what each is for and its defaults."""
    return ListStylesResult(styles=await surface(ctx).service.list_styles())
