"""The audit log: one line per tool call and per image read, saying who (the Entra user's `oid`, or
`local`), what, which image ids, how long it took and how it ended.

It never logs the access token. Prompts are personal data: they appear only at DEBUG level.
The fields also travel as `extra` attributes, which log exporters (OpenTelemetry) keep as dimensions.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from pydantic import BaseModel

from noisett_mcp.auth.caller import LOCAL_OWNER, current_caller
from noisett_mcp.schemas import is_image_id

log = logging.getLogger("noisett_mcp.audit")

AUDITED_METHODS = frozenset({"tools/call", "resources/read"})
IMAGE_URI_PREFIX = "image://"


async def audit_requests(ctx: Any, call_next: Any) -> Any:
    """MCP server middleware: wraps each request; logs tool calls and resource reads."""
    if ctx.method not in AUDITED_METHODS:
        return await call_next(ctx)
    params: dict[str, Any] = ctx.params if isinstance(ctx.params, dict) else {}
    given = params.get("arguments")
    arguments: dict[str, Any] = given if isinstance(given, dict) else {}
    tool = uri = None
    if ctx.method == "tools/call":
        tool = _printable(params.get("name"))
        action = f"tool={tool}"
        ids = _ids_in([arguments.get("image_id")])
    else:
        uri = _printable(params.get("uri", ""))
        action = f"resource={uri}"
        ids = _ids_in([uri.removeprefix(IMAGE_URI_PREFIX)])
    caller = current_caller()
    started = time.perf_counter()
    result: Any = None
    outcome = "failed"  # an exception escaped: validation, unknown tool, a bug
    try:
        result = await call_next(ctx)
        outcome = "error" if _field(result, "is_error", "isError") else "ok"
        return result
    except anyio.get_cancelled_exc_class():
        outcome = "cancelled"
        raise
    finally:
        ids += [i for i in _result_ids(result) if i not in ids]
        duration_ms = round((time.perf_counter() - started) * 1000)
        user = caller.user or LOCAL_OWNER
        log.info(
            "%s user=%s tenant=%s client=%s images=%s outcome=%s duration_ms=%d",
            action,
            user,
            caller.tenant or "-",
            caller.client or "-",
            ",".join(ids) or "-",
            outcome,
            duration_ms,
            extra={
                "mcp_method": ctx.method,
                "tool_name": tool,
                "resource_uri": uri,
                "user_oid": user,
                "tenant_id": caller.tenant,
                "client_app_id": caller.client,
                "image_ids": ids,
                "outcome": outcome,
                "duration_ms": duration_ms,
            },
        )
        if "prompt" in arguments and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s user=%s prompt=%r negative_prompt=%r",
                action,
                user,
                arguments.get("prompt"),
                arguments.get("negative_prompt", ""),
            )


def _printable(value: object) -> str:
    """A client-chosen name, cut short and kept on one line (no forged log lines)."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(value)[:100])


def _field(result: Any, attribute: str, wire_name: str) -> Any:
    if isinstance(result, BaseModel):
        return getattr(result, attribute, None)
    if isinstance(result, dict):
        return result.get(wire_name, result.get(attribute))
    return None


def _result_ids(result: Any) -> list[str]:
    """Image ids in a generate_image or get_image result (its structured content)."""
    content = _field(result, "structured_content", "structuredContent")
    if not isinstance(content, dict):
        return []
    images = content.get("images") or [content.get("image")]
    return _ids_in(image.get("id") for image in images if isinstance(image, dict))


def _ids_in(values: Any) -> list[str]:
    # Only well-formed ids: whatever else a caller sent does not belong in the log.
    return [value for value in values if is_image_id(value)]
