"""Finding 4: abandoned generations leaked. Real HTTP clients that drop their connection while their
generation waits in line: each job leaves memory once its final record is saved, every record says how
its job finished (`cancelled`, not `queued`), and a submit cut short leaves all of a job's records or
none."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import anyio
import httpx2
import pytest

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app
from noisett_mcp.schemas import GenerationRequest
from noisett_mcp.service import Noisett
from tests.support import poll_until, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}


def call(n: int, steps: int = 2) -> dict[str, object]:
    arguments = {"prompt": f"abandoned {n}", "steps": steps}
    return {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": "generate_image", "arguments": arguments},
    }


async def abandon(http: httpx2.AsyncClient, base: str, n: int, service: Noisett) -> None:
    """POST a generate_image call, wait until its job is in line, then drop the connection."""
    depth = service.queue.depth
    async with http.stream("POST", f"{base}/mcp", json=call(n), headers=HEADERS) as response:
        assert response.status_code == 200
        await poll_until(lambda: service.queue.depth > depth, timeout=30, interval=0.01)
    # Leaving the block closed the connection mid-response: the server cancels the call.
    await poll_until(lambda: service.queue.depth == depth, timeout=30, interval=0.01)


def records_by_job(settings: Settings) -> dict[str, list[dict[str, object]]]:
    jobs: dict[str, list[dict[str, object]]] = {}
    for path in settings.images_dir.glob("*.json"):
        record = json.loads(path.read_bytes())
        jobs.setdefault(record["job_id"], []).append(record)
    return jobs


async def test_dropped_connections_leave_no_jobs_in_memory_and_final_records(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_queue=4, max_queue_per_user=4)
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base, httpx2.AsyncClient(timeout=30) as http:
        await service.runner.engine()
        blocker = await service.submit(GenerationRequest(prompt="occupies the GPU", steps=100, count=4))
        await poll_until(lambda: service.queue.running is blocker, timeout=60)
        with anyio.fail_after(240):
            for n in range(20):
                await abandon(http, base, n, service)
            await poll_until(lambda: service.queue.depth == 0, timeout=30)
        await service.queue.cancel(blocker)
        await poll_until(lambda: blocker.settled.is_set(), timeout=60)
        await poll_until(lambda: not service._jobs, timeout=10)
    jobs = records_by_job(settings)
    statuses = Counter(r["status"] for records in jobs.values() for r in records)
    assert len(jobs) == 21 and statuses == {"cancelled": 21 + 3}, statuses


async def test_a_submit_cut_short_records_all_of_its_images_or_none(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_queue=50, max_queue_per_user=50)
    async with Noisett(settings) as service:
        await service.runner.engine()
        blocker = await service.submit(GenerationRequest(prompt="occupies the GPU", steps=100, count=1))
        request = GenerationRequest(prompt="cut short", steps=2, count=4)
        kept = [blocker]
        with anyio.fail_after(120):
            for n in range(40):  # cut at many points: before, during and after the record writes
                with anyio.move_on_after(n * 0.0005):
                    kept.append(await service.submit(request))
            for job in kept:
                await service.queue.cancel(job)
            await poll_until(lambda: not service._jobs, timeout=60)
    jobs = records_by_job(settings)
    assert len(jobs) > len(kept), "some submits were cut short after writing records"
    assert {len(records) for job_id, records in jobs.items() if job_id != blocker.id} == {4}
    unfinished = [
        r["id"] for records in jobs.values() for r in records if r["status"] in ("queued", "running")
    ]
    assert not unfinished, f"{len(unfinished)} record(s) of abandoned jobs never say how they ended"
