"""The `image://{image_id}` resource: the full image in the format it was made in, or a JSON status while
it is unfinished."""

# No `from __future__ import annotations` here: the SDK reads the signature at registration.

import json
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from noisett_mcp.auth.caller import current_caller
from noisett_mcp.errors import NoisettError, RequestError
from noisett_mcp.surface import Surface, surface

URI = "image://{image_id}"
DESCRIPTION = "The full generated image, in the format it was made in; a JSON status while unfinished."


async def image_resource(image_id: str, ctx: Context[Surface, Any]) -> bytes | str:
    service = surface(ctx).service
    try:
        view = await service.view(image_id, current_caller().owner)
        if view.info.status == "done":
            return (await service.load_image(image_id)).data
    except RequestError as exc:  # a malformed, unknown or foreign id: SEP-2164's -32602
        raise ResourceNotFoundError(str(exc)) from exc
    except NoisettError as exc:  # storage away
        raise ResourceError(str(exc)) from exc
    return json.dumps(
        {
            "status": view.info.status,
            "progress_percent": round(view.info.progress * 100, 1),
            "eta_seconds": view.eta_seconds,
            "error": view.info.error,
        }
    )
