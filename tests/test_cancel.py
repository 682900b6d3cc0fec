"""A client's cancel stops the generation at the next step, and the worker is free for the next job."""

from __future__ import annotations

import time

import anyio
import pytest
from mcp import Client

from noisett_mcp.schemas import GenerationRequest
from noisett_mcp.service import Noisett
from tests.support import poll_until

pytestmark = pytest.mark.anyio


async def test_cancelled_running_job_stops_and_the_next_job_starts_promptly(
    client: Client, service: Noisett
) -> None:
    await service.runner.engine()  # loaded, so the job below is running rather than loading
    with anyio.move_on_after(60):
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                await client.call_tool("generate_image", {"prompt": "a long job", "steps": 100, "count": 4})

            tg.start_soon(long_call)
            await poll_until(
                lambda: service.queue.running is not None and service.queue.running.steps_done >= 2
            )
            job = service.queue.running
            tg.cancel_scope.cancel()

    await poll_until(lambda: job.finished)
    assert job.status == "cancelled"
    assert job.steps_done < job.total_steps
    started = time.monotonic()
    result = await client.call_tool("generate_image", {"prompt": "the next job", "steps": 2})
    assert not result.is_error and result.structured_content["images"][0]["status"] == "done"
    assert time.monotonic() - started < 30  # generous: the point is that it is not stuck behind the old job
    failed = await client.call_tool("get_image", {"image_id": job.image_ids[0]})
    assert failed.is_error and "cancelled" in failed.content[0].text


async def test_cancelled_queued_job_is_dropped(client: Client, service: Noisett) -> None:
    await service.runner.engine()
    blocker = await service.submit(GenerationRequest(prompt="occupies the worker", steps=100, count=4))
    await poll_until(lambda: service.queue.running is blocker)
    with anyio.move_on_after(60):
        async with anyio.create_task_group() as tg:

            async def queued_call() -> None:
                await client.call_tool("generate_image", {"prompt": "waits in line", "steps": 2})

            tg.start_soon(queued_call)
            await poll_until(lambda: service.queue.depth == 1)
            (queued,) = service.queue.waiting
            tg.cancel_scope.cancel()
    assert queued.status == "cancelled" and service.queue.depth == 0
    await service.queue.cancel(blocker)
    await poll_until(lambda: blocker.finished)
    assert blocker.status == "cancelled"
