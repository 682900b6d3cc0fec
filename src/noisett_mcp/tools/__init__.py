"""The MCP tools, one module each (resources, prompts and the App have folders of their own); server.py
registers them. A tool body validates what the schema cannot, calls the service, and shapes a
result that clients can hold (results.py)."""

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from mcp.types import ToolAnnotations


class ToolRegistry(Protocol):
    """Where a tool module adds its tool: the server itself, or the gallery's Apps extension
    (tools/gallery.py), which binds the tool to the gallery and hands it to the server."""

    def add_tool(
        self,
        fn: Callable[..., Any],
        *,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
    ) -> Any: ...


def description(fn: Callable[..., Any]) -> str:
    """A tool's docstring as the LLM should read it: without the source's indentation."""
    return inspect.cleandoc(fn.__doc__ or "")
