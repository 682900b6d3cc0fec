"""Test helpers that start real servers on 127.0.0.1 and stop them."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def serve_asgi(app: object) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on 127.0.0.1 with a random port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@asynccontextmanager
async def cli_http_server(env: dict[str, str], log_path: Path, timeout: float = 60) -> AsyncIterator[str]:
    """Run `noisett-mcp serve --transport http` as a real subprocess on a random loopback port; yield
    its base URL once /healthz answers; stop it by its process id, also on failure."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "noisett_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx2.AsyncClient() as http:
            with anyio.fail_after(timeout):
                while True:
                    assert process.poll() is None, log_path.read_text()
                    try:
                        if (await http.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
