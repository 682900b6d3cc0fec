"""What the MCP items reach through their `Context`: the running service, and where the server runs.
server.py hands it to the SDK as the server's lifespan state, and a tool reads it with `surface(ctx)`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context

from noisett_mcp.service import Noisett


@dataclass(frozen=True)
class Surface:
    """`local_files`: the server runs as the user on their computer (stdio), so generate_image may read a
    source_path. Over HTTP it is refused, and no URL is ever fetched (that would be an SSRF risk)."""

    service: Noisett
    local_files: bool = False


def surface(ctx: Context[Surface, Any]) -> Surface:
    """The surface of the server that is answering this request."""
    return ctx.request_context.lifespan_context


def lifespan(state: Surface) -> Callable[[Any], AbstractAsyncContextManager[Surface]]:
    """The server's lifespan: it only lends the surface. The service runs longer than any one transport
    (http.py and the CLI start and stop it), so the lifespan neither starts nor closes it."""

    @asynccontextmanager
    async def lend(_server: Any) -> AsyncIterator[Surface]:
        yield state

    return lend
