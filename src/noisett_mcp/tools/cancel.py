"""`cancel_image`: stop a generation by any of its image ids, queued or running, here or on a GPU worker.
Only the owner may, or a holder of an app role the operator names (NOISETT_CANCEL_ROLES) within their own
tenant (NOISETT_CANCEL_ROLES_SCOPE); to anyone else an image id answers exactly as an unknown one does.
It answers with the job's state only, never the image's prompt, parameters or link."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

from typing import Annotated, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from noisett_mcp.auth.caller import current_caller
from noisett_mcp.schemas import FINISHED, Status
from noisett_mcp.surface import Surface, surface
from noisett_mcp.tools.get_image import ImageId
from noisett_mcp.tools.results import result


class CancelImageResult(BaseModel):
    """The job's state after the cancel, and nothing of the image itself: an operator who cancels
    someone else's job must not read their prompt, parameters or link (get_image is for the owner)."""

    image_id: str = Field(description="The image id the cancel was asked for.")
    status: Status = Field(description="The image's status now: queued, running, done, failed or cancelled.")
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
    status = await service.cancel(image_id, current_caller().owner, operator=operator)
    if status == "cancelled":
        message = f"Image {image_id} is cancelled."
    elif status in FINISHED:
        message = f"Image {image_id} was already {status}: nothing to cancel."
    else:
        message = f"Image {image_id} will stop at its next denoising step; get_image then says cancelled."
    cancelled = status == "cancelled"
    done = CancelImageResult(image_id=image_id, status=status, cancelled=cancelled, message=message)
    return result(done, [TextContent(type="text", text=message)])
