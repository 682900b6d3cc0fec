"""The MCP tools and resources, one module each; server.py registers them. A tool body validates what
the schema cannot, calls the service, and shapes a result that clients can hold (results.py)."""

import inspect
from collections.abc import Callable
from typing import Any


def description(fn: Callable[..., Any]) -> str:
    """A tool's docstring as the LLM should read it: without the source's indentation."""
    return inspect.cleandoc(fn.__doc__ or "")
