"""Test helpers: real servers on 127.0.0.1 (started and stopped), bounded polling, child-process
environments and sample records. The benchmarks use them too (`python -m benchmarks.run`)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn

from noisett_mcp.config import Settings
from noisett_mcp.storage import ImageRecord


async def poll_until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Until `predicate()` (sync or async) is true; fail after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await anyio.sleep(interval)


def child_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `noisett-mcp` child process on the demo model: this process's environment
    with NOISETT_MODEL=demo, the settings' data folder and model cache, and `extra`."""
    env = {**os.environ, "NOISETT_MODEL": "demo"}
    if settings is not None:
        env["NOISETT_DATA_DIR"] = str(settings.data_dir)
        if settings.model_cache_dir is not None:
            env["MODEL_CACHE_DIR"] = str(settings.model_cache_dir)
    return env | extra


async def wait_healthy(base: str, *, status: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Poll `base`/healthz until it answers (with `status`, when given); return its body."""
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(timeout):
            while True:
                try:
                    body = (await http.get(f"{base}/healthz")).json()
                    if status is None or body.get("status") == status:
                        return body
                except (httpx2.TransportError, ValueError):
                    pass
                await anyio.sleep(0.1)


def sample_record(image_id: str, **fields: Any) -> ImageRecord:
    """A finished image's record, for storage tests that store bytes of their own."""
    values: dict[str, Any] = {
        "id": image_id,
        "uri": f"image://{image_id}",
        "job_id": image_id,
        "index": 0,
        "owner": "local",
        "status": "done",
        "progress": 1.0,
        "seed": 1,
        "prompt": "a sample",
        "negative_prompt": "",
        "style": "none",
        "style_strength": 0.0,
        "aspect_ratio": "1:1",
        "format": "png",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 0.0,
        "model": "demo",
        "variant": "fast",
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    return ImageRecord(**(values | fields))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def serve_asgi(app: Callable[..., Any]) -> AsyncIterator[str]:
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
async def cli_http_server(
    env: dict[str, str],
    log_path: Path,
    timeout: float = 60,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> AsyncIterator[str]:
    """Run `noisett-mcp serve --transport http` as a real subprocess on a random loopback port; yield
    its base URL once /healthz answers; stop it by its process id, also on failure. The process is
    appended to `started`, when given."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "noisett_mcp", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if started is not None:
        started.append(process)
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx2.AsyncClient() as http:

            async def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return (await http.get(f"{base}/healthz")).status_code == 200
                except httpx2.TransportError:
                    return False

            await poll_until(answers, timeout, interval=0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def add_style(folder: Path, stem: str, adapter: Path | None, **fields: Any) -> Path:
    """Write STEM.toml, and copy the weights next to it, as an operator would."""
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "name": stem,
        "title": f"Style {stem}",
        "description": f"Test style {stem}.",
        "weights": f"{stem}.safetensors",
        "base_models": ["demo"],
    } | fields
    if adapter is not None:
        shutil.copyfile(adapter, folder / values["weights"])
    # JSON strings, numbers and string lists are valid TOML values.
    manifest = folder / f"{stem}.toml"
    manifest.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return manifest


@asynccontextmanager
async def served_process(
    env: dict[str, str], log_path: Path, timeout: float = 60
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`cli_http_server`, yielding the process too (for tests that signal it)."""
    started: list[subprocess.Popen[bytes]] = []
    async with cli_http_server(env, log_path, timeout, started) as base:
        yield started[0], base


def gpu_dry_run(script: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """A benchmarks/gpu script's `--dry-run` (tiny shapes, on the CPU) into `out`; fail with its output."""
    result = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result
