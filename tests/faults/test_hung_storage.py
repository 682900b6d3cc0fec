"""Finding 2: hung storage blocked requests for minutes while health said all was well. Azurite frozen
with SIGSTOP (connections accepted, never answered) under a real HTTP server and MCP client: every
request comes back within the storage deadline plus a little, /healthz says `reachable: false`, and
after SIGCONT the spool drains and health recovers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.types import CallToolResult

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from tests.azurite import Azurite, blob_settings, running_azurite, skip_without_azurite
from tests.support import poll_until, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

DEADLINE = 2.0
SLACK = 2.0  # the goal: no request more than 2 s past the deadline


@pytest.fixture(scope="module")
def own_azurite() -> Iterator[Azurite]:
    """An Azurite of this module's own: it is frozen here, and must not be the session's."""
    skip_without_azurite()
    with running_azurite() as instance:
        yield instance


async def storage(http: httpx2.AsyncClient, base: str) -> dict[str, Any]:
    return (await http.get(f"{base}/healthz")).json()["storage"]


async def timed(client: Client, tool: str, arguments: dict[str, object]) -> tuple[float, CallToolResult]:
    started = time.monotonic()
    result = await client.call_tool(tool, arguments)
    return time.monotonic() - started, result


async def test_requests_outrun_a_hung_store_and_health_says_so(
    own_azurite: Azurite, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**blob_settings(own_azurite), storage_deadline_seconds=DEADLINE)
    service = Noisett(settings)
    async with (
        serve_asgi(create_app(service)) as base,
        Client(f"{base}/mcp") as client,
        httpx2.AsyncClient(timeout=30) as http,
    ):
        await service.runner.engine()
        before = await client.call_tool("generate_image", {"prompt": "stored before", "steps": 2})
        uploaded = before.structured_content["images"][0]["id"]
        await poll_until(lambda: not service.store.spool.pending_now(), timeout=30)  # type: ignore[attr-defined]
        baseline, _ = await timed(client, "generate_image", {"prompt": "a baseline", "steps": 2})
        assert (await storage(http, base))["reachable"] is True

        own_azurite.freeze()
        try:
            with anyio.fail_after(60):  # before the fix: about 3 minutes per request
                frozen_at = time.monotonic()
                took, made = await timed(client, "generate_image", {"prompt": "while hung", "steps": 2})
                assert not made.is_error, made.content
                assert made.structured_content["images"][0]["status"] == "done"
                assert took < baseline + DEADLINE + SLACK, f"generate_image took {took:.1f} s"

                new = made.structured_content["images"][0]["id"]
                took, got = await timed(client, "get_image", {"image_id": new})
                assert not got.is_error and took < DEADLINE + SLACK, "served from the spool"

                took, got = await timed(client, "get_image", {"image_id": uploaded})
                assert got.is_error and "unreachable" in got.content[0].text
                assert took < DEADLINE + SLACK, f"get_image of an uploaded image took {took:.1f} s"

                async def reported() -> bool:
                    return (await storage(http, base))["reachable"] is False

                await poll_until(reported, timeout=10, interval=0.2)
                assert time.monotonic() - frozen_at < 10 + 3 * (DEADLINE + SLACK) + baseline
                assert (await storage(http, base))["spooled"] >= 1
        finally:
            own_azurite.thaw()

        async def recovered() -> bool:
            body = await storage(http, base)
            return body["reachable"] is True and body["spooled"] == 0

        await poll_until(recovered, timeout=60, interval=0.2)
        got = await client.call_tool("get_image", {"image_id": uploaded})
        assert not got.is_error
