"""An always-on front and GPU workers joined by an Azure Storage queue: real processes on one Azurite
(blob and queue services), reached by the SDK's HTTP client."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.azurite import Azurite, running_azurite, skip_without_azurite
from tests.support import free_port, poll_until, wait_healthy
from tests.test_cancel_http import HEADERS, Call, _post_cancel

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    skip_without_azurite()
    with running_azurite(("blob", "queue")) as running:
        yield running


class Processes:
    """Fronts and workers as real `noisett-mcp` processes, all stopped at the end."""

    def __init__(self, azurite: Azurite, tmp_path: Path, model_cache: Path) -> None:
        tag = secrets.token_hex(4)
        self.env = {
            **os.environ,
            "NOISETT_MODEL": "demo",
            "MODEL_CACHE_DIR": str(model_cache),
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "NOISETT_BLOB_IMAGES_CONTAINER": f"images-{tag}",
            "NOISETT_BLOB_STYLES_CONTAINER": f"styles-{tag}",
            "NOISETT_QUEUE": "azure",
            "NOISETT_QUEUE_NAME": f"jobs-{tag}",
            "NOISETT_QUEUE_VISIBILITY_SECONDS": "6",
            "NOISETT_WAIT_SECONDS": "300",  # well past a loaded machine's time for these jobs
        }
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], name: str, **env: str) -> subprocess.Popen[bytes]:
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "noisett_mcp", *args],
            env={**self.env, "NOISETT_DATA_DIR": str(data_dir), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def front(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = self._spawn(["serve", "--transport", "http", "--port", str(port)], f"front-{port}")
        return proc, f"http://127.0.0.1:{port}"

    def worker(self, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = self._spawn(["worker", "--health-port", str(port)], f"worker-{port}", **env)
        return proc, f"http://127.0.0.1:{port}"

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(azurite: Azurite, tmp_path: Path, model_cache: Path) -> Iterator[Processes]:
    running = Processes(azurite, tmp_path, model_cache)
    try:
        yield running
    finally:
        running.stop()


async def has_job(worker_health: str) -> bool:
    return (await wait_healthy(worker_health))["job"] is not None


async def test_front_and_two_workers_make_images_with_progress(processes: Processes) -> None:
    _, front = processes.front()
    workers = [processes.worker()[1] for _ in range(2)]
    body = await wait_healthy(front)
    assert body["role"] == "front" and body["status"] == "ready" and "queue_depth" in body
    for worker in workers:
        assert (await wait_healthy(worker, status="ready"))["role"] == "worker"

    reported: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, message))

    async with Client(f"{front}/mcp") as client:
        async with anyio.create_task_group() as tg:
            results = []

            async def generate(n: int) -> None:
                result = await client.call_tool(
                    "generate_image",
                    {"prompt": f"scaled out {n}", "steps": 6, "count": 2},
                    progress_callback=on_progress if n == 0 else None,
                )
                results.append(result)

            for n in range(3):
                tg.start_soon(generate, n)
        for result in results:
            assert not result.is_error, result.content
            assert [i["status"] for i in result.structured_content["images"]] == ["done", "done"]
        got = await client.call_tool(
            "get_image", {"image_id": results[0].structured_content["images"][1]["id"]}
        )
        assert not got.is_error and any(block.type == "image" for block in got.content)
    steps = [value for value, message in reported if message and "step" in message]
    assert steps and steps == sorted(set(steps)) and steps[-1] == 12
    done = [(await wait_healthy(worker))["jobs_done"] for worker in workers]
    assert sum(done) == 3


async def test_a_killed_worker_s_job_is_finished_by_another(processes: Processes) -> None:
    _, front = processes.front()
    first, first_health = processes.worker()
    await wait_healthy(first_health, status="ready")
    await wait_healthy(front)
    async with Client(f"{front}/mcp") as client:
        made = await client.call_tool(
            "generate_image", {"prompt": "survives", "steps": 50, "count": 3, "wait": False}
        )
        image_ids = [image["id"] for image in made.structured_content["images"]]

        await poll_until(lambda: has_job(first_health), interval=0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        _, second_health = processes.worker()

        async def finished() -> bool:
            got = await client.call_tool("get_image", {"image_id": image_ids[-1]})
            return got.structured_content is not None and got.structured_content["image"]["status"] == "done"

        await poll_until(finished, timeout=240, interval=0.2)
        for image_id in image_ids:
            got = await client.call_tool("get_image", {"image_id": image_id})
            assert not got.is_error and got.structured_content["image"]["status"] == "done"
    assert (await wait_healthy(second_health))["jobs_done"] == 1


async def test_a_job_that_kills_its_workers_ends_failed_after_the_maximum_attempts(
    processes: Processes,
) -> None:
    _, front = processes.front()
    first, first_health = processes.worker(NOISETT_MAX_ATTEMPTS="1")
    await wait_healthy(first_health, status="ready")
    await wait_healthy(front)
    async with Client(f"{front}/mcp") as client:
        made = await client.call_tool(
            "generate_image", {"prompt": "poison", "steps": 50, "count": 3, "wait": False}
        )
        image_id = made.structured_content["images"][0]["id"]

        await poll_until(lambda: has_job(first_health), interval=0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        processes.worker(NOISETT_MAX_ATTEMPTS="1")

        async def failed() -> bool:
            got = await client.call_tool("get_image", {"image_id": image_id})
            return got.is_error

        await poll_until(failed, timeout=240, interval=0.2)
        got = await client.call_tool("get_image", {"image_id": image_id})
        assert "failed" in got.content[0].text and "gave up after 1 attempts" in got.content[0].text


async def test_cancel_reaches_the_worker_in_another_process(processes: Processes) -> None:
    _, front = processes.front()
    _, worker = processes.worker()
    await wait_healthy(worker, status="ready")
    await wait_healthy(front)
    async with Client(f"{front}/mcp") as client:
        ids: list[str] = []

        async def long_call() -> None:
            await client.call_tool("generate_image", {"prompt": "to cancel", "steps": 100, "count": 4})

        with anyio.move_on_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)

                await poll_until(lambda: has_job(worker), interval=0.2)
                tg.cancel_scope.cancel()

        async def worker_idle() -> bool:
            return (await wait_healthy(worker))["job"] is None

        await poll_until(worker_idle, timeout=60, interval=0.2)  # fails unless the cancel freed the worker
        result = await client.call_tool("generate_image", {"prompt": "after the cancel", "steps": 2})
        assert not result.is_error
        ids.append(result.structured_content["images"][0]["id"])
    assert (await wait_healthy(worker))["jobs_done"] == 2


async def test_front_answers_at_once_without_workers_and_jobs_wait_for_one(processes: Processes) -> None:
    _, front = processes.front()
    await wait_healthy(front)
    async with Client(f"{front}/mcp") as client:
        tools = await client.list_tools()
        assert {"generate_image", "list_styles", "get_image"} <= {tool.name for tool in tools.tools}
        made = await client.call_tool(
            "generate_image", {"prompt": "waits for a worker", "steps": 2, "wait": False}
        )
        image_id = made.structured_content["images"][0]["id"]
        got = await client.call_tool("get_image", {"image_id": image_id})
        assert got.structured_content["image"]["status"] == "queued"
        body = await wait_healthy(front)
        assert body["queue_depth"] >= 1 or body["oldest_job_age_seconds"] is not None

        processes.worker()

        async def done() -> bool:
            got = await client.call_tool("get_image", {"image_id": image_id})
            return got.structured_content is not None and got.structured_content["image"]["status"] == "done"

        await poll_until(done, timeout=240, interval=0.2)


async def test_a_cancel_on_another_front_stops_the_job_on_the_worker(processes: Processes) -> None:
    (_, front), (_, other_front) = processes.front(), processes.front()
    _, worker = processes.worker()
    await wait_healthy(worker, status="ready")
    await wait_healthy(front)
    await wait_healthy(other_front)

    def steps_seen() -> float:
        notes = [e["params"] for e in call.events if e.get("method") == "notifications/progress"]
        return max((note["progress"] for note in notes), default=0)

    call = Call()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call.run, front, 77, HEADERS)
        await poll_until(lambda: steps_seen() >= 2, timeout=120, interval=0.1)
        assert await _post_cancel(other_front, 77, HEADERS) == 202
        await poll_until(lambda: call.result is not None, timeout=60, interval=0.2)
    # The worker checks the cancel each second and stops at its next step: far short of 400 steps.
    assert steps_seen() < 200
    result = call.result
    assert result is not None and result["result"]["isError"]
    assert "cancelled" in result["result"]["content"][0]["text"]
    assert (await wait_healthy(worker))["job"] is None


async def test_a_worker_starts_from_a_source_the_front_stored_and_from_a_stored_image(
    processes: Processes, azurite: Azurite
) -> None:
    """A queue message holds 64 KiB: the front stores a given source under its sha256, and the worker
    loads it from there; a source image id needs nothing stored, the worker loads the image itself."""
    import base64
    import hashlib

    from azure.storage.blob.aio import BlobServiceClient

    from tests.test_img2img import SOURCE, SOURCE_B64

    _, front = processes.front()
    _, worker = processes.worker()
    await wait_healthy(worker, status="ready")
    async with Client(f"{front}/mcp") as client:
        made = await client.call_tool(
            "generate_image", {"prompt": "restyled", "steps": 4, "source_image": SOURCE_B64, "strength": 0.5}
        )
        assert not made.is_error, made.content
        (image,) = made.structured_content["images"]
        assert image["status"] == "done" and image["source_sha256"] == hashlib.sha256(SOURCE).hexdigest()
        varied = await client.call_tool(
            "generate_image",
            {"prompt": "varied", "steps": 4, "source_image_id": image["id"], "strength": 0.3, "count": 2},
        )
        assert not varied.is_error, varied.content
        assert [v["status"] for v in varied.structured_content["images"]] == ["done", "done"]
        stored = await client.read_resource(f"image://{image['id']}")
        source_of_variations = hashlib.sha256(base64.b64decode(stored.contents[0].blob)).hexdigest()
        assert {v["source_sha256"] for v in varied.structured_content["images"]} == {source_of_variations}
    container = processes.env["NOISETT_BLOB_IMAGES_CONTAINER"]
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        names = [
            b.name
            async for b in blobs.get_container_client(container).list_blobs(name_starts_with="sources/")
        ]
    assert names == [f"sources/{image['source_sha256']}"]  # the stored image needed no copy
