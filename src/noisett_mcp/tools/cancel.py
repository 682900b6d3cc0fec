"""`cancel_image`: stop a generation by any of its image ids, queued or running, here or on a GPU worker.
Only the owner may, or a holder of an app role the operator names (NOISETT_CANCEL_ROLES); to anyone
else an image id answers exactly as an unknown one does."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Annotated, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from noisett_mcp.auth.caller import current_caller
from noisett_mcp.schemas import ImageInfo
from noisett_mcp.surface import Surface, surface
from noisett_mcp.tools.get_image import ImageId
from noisett_mcp.tools.results import result


class CancelImageResult(BaseModel):
    image: ImageInfo = Field(description="The image as it stands after the cancel.")
    cancelled: bool = Field(description="True once its job has stopped; false while it is still stopping.")
    message: str


def caller_roles() -> set[str]:
    """The app roles in the verified token (none over stdio or without auth)."""
    token = get_access_token()
    roles = (token.claims or {}).get("roles") if token is not None else None
    return {str(role) for role in roles} if isinstance(roles, list) else set()


ANNOTATIONS = ToolAnnotations(
    title="Cancel image",
    readOnlyHint=False,
    destructiveHint=True,
    idempotentHint=True,
    openWorldHint=False,
)


async def cancel_image(
    ctx: Context[Surface, Any], image_id: ImageId
) -> Annotated[CallToolResult, CancelImageResult]:
    """Cancel a generation you started, by the id of any of its images: a queued job leaves the
    line, a running one stops at its next step. All images of that generate_image call stop.
    Use it for jobs started with wait=false that are no longer wanted."""
    service = surface(ctx).service
    operator = bool(set(service.settings.cancel_roles) & caller_roles())
    view = await service.cancel(image_id, current_caller().owner, any_owner=operator)
    info = view.info
    if info.status == "cancelled":
        message = f"Image {info.id} is cancelled."
    elif view.finished:
        message = f"Image {info.id} was already {info.status}: nothing to cancel."
    else:
        message = f"Image {info.id} will stop at its next denoising step; get_image then says cancelled."
    done = CancelImageResult(image=info, cancelled=info.status == "cancelled", message=message)
    return result(done, [TextContent(type="text", text=message)])
