"""`cancel_image`: stop the generation of one of your own images, while it is queued or running."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from noisett_mcp.auth.caller import current_caller
from noisett_mcp.errors import NoisettError
from noisett_mcp.service import Noisett
from noisett_mcp.tools import description
from noisett_mcp.tools.get_image import ImageId

# Destructive: the images of a cancelled job are never made (clients ask before such a call).
ANNOTATIONS = ToolAnnotations(
    title="Cancel image", readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False
)


def register(mcp: MCPServer, service: Noisett) -> None:
    async def cancel_image(image_id: ImageId) -> str:
        """Cancel the generation of an image you asked for, while it is queued or running; the other
        images of the same generate_image call stop with it. A finished image stays as it is."""
        try:
            view = await service.cancel(image_id, current_caller().owner)
        except NoisettError as exc:
            raise ToolError(str(exc)) from exc
        info = view.info
        if info.status == "cancelled":
            return f"Image {info.id} is cancelled."
        if view.finished:
            return f"Image {info.id} was already {info.status}: nothing to cancel."
        return f"Image {info.id} will stop at its next denoising step; get_image then says cancelled."

    mcp.add_tool(
        cancel_image,
        title="Cancel image",
        description=description(cancel_image),
        annotations=ANNOTATIONS,
    )
