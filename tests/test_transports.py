"""The same server over stdio (a real subprocess) and streamable HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett
from tests.support import child_env, cli_http_server, serve_asgi

pytestmark = pytest.mark.anyio


def _children_with_torch() -> dict[int, bool]:
    """Our child processes, and whether each has torch's shared library mapped (i.e. imported torch)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():
                maps = (stat.parent / "maps").read_text()
                found[int(stat.parent.name)] = "libtorch" in maps
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc to see what the child loaded")
async def test_stdio_answers_tools_list_without_importing_torch_then_generates(settings: Settings) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "noisett_mcp", "serve"],
        env=child_env(settings, NOISETT_PRELOAD="true"),
    )
    async with Client(params) as client:
        tools = await client.list_tools()
        names = {tool.name for tool in tools.tools}
        assert names == {"generate_image", "list_styles", "get_image", "cancel_image"}
        children = _children_with_torch()
        assert children and not any(children.values()), (
            "the server imported torch before answering tools/list"
        )
        result = await client.call_tool("generate_image", {"prompt": "over stdio", "steps": 2})
        assert not result.is_error
        assert result.structured_content["images"][0]["status"] == "done"
        assert any(_children_with_torch().values()), "the check above could not have failed"


async def test_http_serves_mcp_progress_and_health(settings: Settings) -> None:
    async with serve_asgi(create_app(Noisett(settings))) as base:  # the app's lifespan runs the service
        async with httpx2.AsyncClient() as http:
            health = (await http.get(f"{base}/healthz")).json()
            assert health["status"] in ("loading", "ready") and health["model"] == "demo"
            assert {"device", "gpu_available", "version", "queue_depth"} <= set(health)
            assert (await http.get(f"{base}/health")).status_code == 200

        reported: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append(progress)

        async with Client(f"{base}/mcp") as client:
            result = await client.call_tool(
                "generate_image", {"prompt": "over http", "steps": 3}, progress_callback=on_progress
            )
            assert not result.is_error
            image_id = result.structured_content["images"][0]["id"]
        assert reported[-3:] == [1, 2, 3]

        # Stateless: a second, independent session reads what the first made.
        async with Client(f"{base}/mcp", mode="legacy") as legacy:
            got = await legacy.call_tool("get_image", {"image_id": image_id})
            assert not got.is_error and got.structured_content["image"]["status"] == "done"

        async with httpx2.AsyncClient() as http:
            health = (await http.get(f"{base}/healthz")).json()
            assert (
                health["status"] == "ready" and health["device"] == "cpu" and health["gpu_available"] is False
            )


async def test_http_rejects_a_foreign_host_header(settings: Settings) -> None:
    async with serve_asgi(create_app(Noisett(settings))) as base:  # the app's lifespan runs the service
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                f"{base}/mcp",
                headers={"Host": "evil.example.com", "Accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            )
        assert response.status_code in (403, 421)


async def test_cli_serves_http_on_loopback(settings: Settings, tmp_path: Path) -> None:
    async with (
        cli_http_server(child_env(settings), tmp_path / "server.log") as base,
        Client(f"{base}/mcp") as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": "from the cli", "steps": 1})
        assert not result.is_error
