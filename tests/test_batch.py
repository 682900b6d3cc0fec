"""`count` as one batch: one pipeline call with a CPU generator per image, on the real diffusers pipeline
with the demo model. Each image stays the one its seed gives alone; progress, cancel, resume and the
out-of-memory fallback work with batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO

import anyio
import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image

from noisett_mcp.config import Settings
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.images import read_metadata
from noisett_mcp.jobs.base import Job
from noisett_mcp.schemas import GenerationRequest, GenerationSpec, new_image_id
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import poll_until

pytestmark = pytest.mark.anyio

# Per channel, of 255. A batch runs the same arithmetic on a taller matrix; in float32 on a CPU the
# demo model's images came out bitwise identical, and this leaves room for other kernels' summation order.
TOLERANCE = 2


def spec(count: int, steps: int = 4) -> GenerationSpec:
    return GenerationSpec(
        prompt="a lighthouse at dusk",
        width=64,
        height=64,
        steps=steps,
        guidance=0.0,
        seeds=[101 + i for i in range(count)],
        model="demo",
        variant="fast",
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def largest_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def never() -> bool:
    return False


def test_an_image_rendered_in_a_batch_of_four_is_the_one_its_seed_gives_alone(
    make_settings: Callable[..., Settings],
) -> None:
    engine = Engine(EngineConfig.from_settings(make_settings(batch="on")))
    four = spec(4)
    steps: list[int] = []
    batch = engine.generate_batch(four, [0, 1, 2, 3], steps.append, never)
    assert steps == [1, 2, 3, 4], "one progress call per denoising step of the whole batch"
    alone = [engine.generate(four, index, lambda step: None, never) for index in range(4)]
    assert [largest_difference(b, a) for b, a in zip(batch, alone, strict=True)] <= [TOLERANCE] * 4
    assert len({image.tobytes() for image in batch}) == 4, "four seeds, four different images"


async def test_count_four_renders_as_one_batch_with_one_progress_notification_per_step(
    make_settings: Callable[..., Settings],
) -> None:
    updates: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert total == 12
        updates.append((progress, message))

    async with Noisett(make_settings(batch="on")) as service, Client(build_server(service)) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "kites", "steps": 3, "count": 4}, progress_callback=on_progress
        )
        assert not result.is_error
        assert [image["status"] for image in result.structured_content["images"]] == ["done"] * 4
    steps = [(p, m) for p, m in updates if m and "step" in m]
    assert steps == [
        (4, "images 1–4/4, step 1/3"),
        (8, "images 1–4/4, step 2/3"),
        (12, "images 1–4/4, step 3/3"),
    ]
    values = [p for p, _ in updates]
    assert values == sorted(set(values)), "MCP progress must strictly increase"


async def test_images_rendered_in_one_batch_say_so_in_their_result_and_their_png_text(
    make_settings: Callable[..., Settings],
) -> None:
    """On a GPU a batched image can differ from its seed alone: "use this seed" must not surprise."""
    async with Noisett(make_settings(batch="on")) as service, Client(build_server(service)) as client:
        batched = await client.call_tool("generate_image", {"prompt": "kites", "steps": 1, "count": 2})
        alone = await client.call_tool("generate_image", {"prompt": "kites", "steps": 1, "count": 1})
        for result, expected in ((batched, True), (alone, False)):
            assert not result.is_error
            for image in result.structured_content["images"]:
                assert image["batched"] is expected
                stored = await service.store.load_image(image["id"])
                assert stored is not None
                assert read_metadata(stored.data)["batched"] is expected


async def test_with_batching_off_the_images_render_one_after_another(
    make_settings: Callable[..., Settings],
) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with Noisett(make_settings(batch="off")) as service, Client(build_server(service)) as client:
        await client.call_tool(
            "generate_image", {"prompt": "kites", "steps": 2, "count": 2}, progress_callback=on_progress
        )
    assert [m for m in messages if m and "step" in m] == [
        "image 1/2, step 1/2",
        "image 1/2, step 2/2",
        "image 2/2, step 1/2",
        "image 2/2, step 2/2",
    ]


async def test_a_cancelled_batch_stops_at_the_next_step_and_stores_none_of_its_images(
    make_settings: Callable[..., Settings],
) -> None:
    async with Noisett(make_settings(batch="on")) as service:
        await service.runner.engine()
        job = await service.submit(GenerationRequest(prompt="a long batch", steps=100, count=4))
        await poll_until(lambda: job.steps_done >= 8, timeout=120)  # two steps of the batch ran
        assert job.batch == range(0, 4)
        await service.queue.cancel(job)
        # The runner writes the final records after the job finishes: wait until it is done with it.
        await poll_until(lambda: job.finished and service.queue.running is None, timeout=60)
        assert job.status == "cancelled" and job.images_done == 0
        assert job.steps_done < 20 * 4, "stopped at the next step, not after the denoising loop"
        for image_id in job.image_ids:
            record = await service.store.load_record(image_id)
            assert record is not None and record.status == "cancelled"


async def test_a_resumed_job_renders_only_its_missing_images_in_one_batch(
    make_settings: Callable[..., Settings],
) -> None:
    """As a worker that takes over a dead worker's job does: the first image is stored, three are not."""
    async with Noisett(make_settings(batch="on")) as service:
        runner = service.runner
        engine = await runner.engine()
        job = Job(id=new_image_id(), spec=spec(4, steps=3), image_ids=[new_image_id() for _ in range(4)])
        job.images_done, job.steps_done = 1, 3  # what worker.py sets from the stored images
        seen: set[range] = set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.execute, job)
            while not job.finished:
                seen.add(job.batch)
                await anyio.sleep(0.005)
        assert job.status == "done" and job.images_done == 4
        assert range(1, 4) in seen and range(0, 4) not in seen
        assert await service.store.load_record(job.image_ids[0]) is None, "image 1 was not rendered again"
        for index in (1, 2, 3):
            stored = Image.open(BytesIO((await service.load_image(job.image_ids[index])).data))
            alone = engine.generate(job.spec, index, lambda step: None, never)
            assert largest_difference(stored, alone) <= TOLERANCE


async def test_out_of_memory_in_a_batch_falls_back_to_one_at_a_time_for_the_process(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with Noisett(make_settings(batch="on")) as service, Client(build_server(service)) as client:
        engine = await service.runner.engine()
        engine.inject_failure = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        with caplog.at_level(logging.WARNING):
            result = await client.call_tool(
                "generate_image", {"prompt": "too big at once", "steps": 2, "count": 3}
            )
        assert not result.is_error
        assert [image["status"] for image in result.structured_content["images"]] == ["done"] * 3
        assert engine.batching is False
        assert "one image at a time" in caplog.text
        messages: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            messages.append(message)

        await client.call_tool(
            "generate_image", {"prompt": "next", "steps": 1, "count": 2}, progress_callback=on_progress
        )
        assert [m for m in messages if m and "step" in m] == ["image 1/2, step 1/1", "image 2/2, step 1/1"]
