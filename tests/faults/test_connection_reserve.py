"""One client cannot hold the connection cap with half-sent requests (issue 22, finding 6), against the real
`noisett-mcp serve --transport http` process on 127.0.0.1: with NOISETT_HTTP_MAX_CONNECTIONS=16 and a
header timeout far longer than the test, more half-sent requests than the cap are held open, and /healthz
and a real MCP session still get through. Before the fix every new connection got 503 until the
half-sent ones timed out. Bounded: 20 sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from noisett_mcp.config import Settings
from tests.support import child_env, cli_http_server

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

CAP = 16
SOCKETS = CAP + 4
HALF_SENT = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"  # no blank line


def hold_half_sent(port: int) -> list[socket.socket]:
    """SOCKETS half-sent requests, opened one after the other; return once the server has closed four
    of them (past the cap it must close some, whichever way it chooses): by then it has accepted all."""
    sockets = []
    for _ in range(SOCKETS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_SENT)
        sockets.append(sock)
    closed = 0
    for sock in sockets:
        sock.settimeout(0.5)
        try:
            while sock.recv(4096):
                pass
            closed += 1
        except TimeoutError:
            continue  # still held open
        except OSError:
            closed += 1
    assert closed >= SOCKETS - CAP, f"the server closed only {closed} of {SOCKETS} half-sent requests"
    return sockets


async def test_half_sent_requests_held_open_leave_room_for_health_and_a_real_mcp_call(
    settings: Settings, tmp_path: Path
) -> None:
    env = child_env(
        settings,
        NOISETT_PRELOAD="false",
        NOISETT_HTTP_MAX_CONNECTIONS=str(CAP),
        NOISETT_HTTP_HEADER_TIMEOUT="600",  # the timeout never frees anything during the test
    )
    async with cli_http_server(env, tmp_path / "server.log") as base:
        port = int(base.rsplit(":", 1)[1])
        sockets = await anyio.to_thread.run_sync(hold_half_sent, port)
        try:
            async with httpx2.AsyncClient(timeout=10) as http:
                health = await http.get(f"{base}/healthz")
            assert health.status_code == 200, health.text
            async with Client(streamable_http_client(f"{base}/mcp")) as client:
                listed = await client.call_tool("list_styles", {})
            assert not listed.is_error, listed.content[0].text
        finally:
            for sock in sockets:
                sock.close()
