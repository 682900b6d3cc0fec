"""The MCP tools, one module each, as module-level functions (resources, prompts and the App have
folders of their own); server.py registers them. A tool takes what it needs from its `Context`
(surface.py), validates what the schema cannot, calls the service, and shapes a result that clients
can hold (results.py). It raises NoisettError as it is: the server turns it into a tool error."""

import inspect
from collections.abc import Callable
from typing import Any


def description(fn: Callable[..., Any]) -> str:
    """A tool's docstring as the LLM should read it: without the source's indentation."""
    return inspect.cleandoc(fn.__doc__ or "")
