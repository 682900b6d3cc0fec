"""Long generations: handles to come back for, a bounded queue, failure recovery, many callers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import poll_until, serve_asgi

pytestmark = pytest.mark.anyio


async def test_wait_false_returns_a_handle_that_get_image_collects(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a handle", "steps": 30, "wait": False})
    assert not result.is_error
    (image,) = result.structured_content["images"]
    assert image["status"] in ("queued", "running")
    assert "get_image" in result.content[0].text

    seen = set()
    with anyio.fail_after(120):
        while True:
            got = await client.call_tool("get_image", {"image_id": image["id"]})
            assert not got.is_error, got.content
            status = got.structured_content["image"]["status"]
            seen.add(status)
            if status == "done":
                break
            assert 0 <= got.structured_content["progress_percent"] < 100
            assert got.structured_content["eta_seconds"] is not None
            assert "get_image again" in got.content[0].text
            resource = await client.read_resource(image["uri"])
            contents = resource.contents[0]
            if hasattr(contents, "text"):  # unfinished: a JSON status (the job may finish in between)
                assert json.loads(contents.text)["status"] in ("queued", "running", "done")
            await anyio.sleep(0.05)
    assert [block.type for block in got.content] == ["text", "image", "resource_link"]
    assert seen & {"queued", "running"}


async def test_a_wait_shorter_than_the_job_returns_running_and_the_job_goes_on(
    make_settings: Callable[..., Settings], model_cache: Path
) -> None:
    async with Noisett(make_settings(wait_seconds=0.5)) as service:
        await service.runner.engine()
        async with Client(build_server(service)) as client:
            result = await client.call_tool("generate_image", {"prompt": "slow", "steps": 40})
            (image,) = result.structured_content["images"]
            assert image["status"] == "running" and not result.is_error
            await poll_until(lambda: service.queue.running is None, timeout=180)
            got = await client.call_tool("get_image", {"image_id": image["id"]})
            assert got.structured_content["image"]["status"] == "done"


async def test_a_full_queue_gets_a_busy_error_and_the_server_goes_on(
    make_settings: Callable[..., Settings],
) -> None:

    async with Noisett(make_settings(max_queue=2)) as service:
        await service.runner.engine()
        async with Client(build_server(service)) as client:
            for n in range(3):  # one runs, two wait
                result = await client.call_tool(
                    "generate_image", {"prompt": "fill", "steps": 40, "wait": False}
                )
                assert not result.is_error
                if n == 0:
                    await poll_until(lambda: service.queue.running is not None, timeout=180)
            busy = await client.call_tool(
                "generate_image", {"prompt": "one too many", "steps": 1, "wait": False}
            )
            assert busy.is_error
            text = busy.content[0].text
            assert (
                "busy" in text and "2 generation(s) are already waiting" in text and "Retry in about" in text
            )
            assert not (await client.call_tool("list_styles", {})).is_error
            for job in (service.queue.running, *service.queue.waiting):
                assert job is not None
                await service.queue.cancel(job)
            await poll_until(lambda: service.queue.running is None and service.queue.depth == 0, timeout=180)
            result = await client.call_tool("generate_image", {"prompt": "room again", "steps": 1})
            assert result.structured_content["images"][0]["status"] == "done"


async def test_a_failing_generation_is_reported_and_the_next_one_succeeds(
    client: Client, service: Noisett
) -> None:
    engine = await service.runner.engine()
    engine.inject_failure = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    failed = await client.call_tool("generate_image", {"prompt": "fails", "steps": 3})
    assert failed.is_error
    assert "ran out of memory" in failed.content[0].text and "NOISETT_OFFLOAD" in failed.content[0].text
    engine.inject_failure = ValueError("something broke inside the pipeline")
    handle = await client.call_tool("generate_image", {"prompt": "fails later", "steps": 3, "wait": False})
    image_id = handle.structured_content["images"][0]["id"]
    await poll_until(lambda: service.queue.running is None and service.queue.depth == 0, timeout=180)
    got = await client.call_tool("get_image", {"image_id": image_id})
    assert got.is_error and "something broke inside the pipeline" in got.content[0].text

    ok = await client.call_tool("generate_image", {"prompt": "works", "steps": 2})
    assert not ok.is_error and ok.structured_content["images"][0]["status"] == "done"


async def test_many_concurrent_http_callers_each_get_an_image_or_a_clear_busy_error(
    settings: Settings,
) -> None:
    settings.max_queue = 3
    outcomes: list[str] = []
    async with serve_asgi(create_app(Noisett(settings))) as base:

        async def caller(n: int) -> None:
            async with Client(f"{base}/mcp") as client:
                result = await client.call_tool("generate_image", {"prompt": f"caller {n}", "steps": 2})
                if result.is_error:
                    assert "busy" in result.content[0].text and "Retry in about" in result.content[0].text
                    outcomes.append("busy")
                else:
                    (image,) = result.structured_content["images"]
                    assert image["status"] == "done"
                    got = await client.call_tool("get_image", {"image_id": image["id"]})
                    assert not got.is_error
                    outcomes.append("image")

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(caller, n)
    assert len(outcomes) == 10
    assert "image" in outcomes
