"""The local queue's arithmetic: positions, estimates and room, without running a job."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.errors import QueueFull
from noisett_mcp.gpu.runner import JobRunner
from noisett_mcp.jobs.base import Job, StepTimer
from noisett_mcp.jobs.local import LocalJobQueue
from noisett_mcp.schemas import GenerationSpec
from noisett_mcp.storage.local import LocalImageStore
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.telemetry import Telemetry

pytestmark = pytest.mark.anyio


def make_job(steps: int = 10, count: int = 1) -> Job:
    spec = GenerationSpec(
        prompt="p",
        width=64,
        height=64,
        steps=steps,
        guidance=0.0,
        seeds=list(range(count)),
        model="m",
        variant="fast",
    )
    return Job(id="0" * 32, spec=spec, image_ids=[f"{i:032x}" for i in range(count)])


def test_the_step_timer_takes_its_first_sample_whole_then_moves_towards_new_ones() -> None:
    timer = StepTimer(initial=1.0, weight=0.5)
    timer.record(10.0, 5)  # 2 s per step
    assert timer.seconds_per_step == 2.0
    timer.record(4.0, 4)  # 1 s per step: halfway there
    assert timer.seconds_per_step == 1.5
    timer.record(3.0, 0)  # no steps: no sample
    assert timer.seconds_per_step == 1.5 and timer.estimate(10) == 15.0


async def test_positions_count_the_running_job_and_those_ahead() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]  # nothing runs here
    first, second = make_job(), make_job()
    await queue.submit(first)
    await queue.submit(second)
    assert queue.position(first) == 0 and queue.position(second) == 1 and queue.depth == 2
    del queue._waiting[0], queue._keys[0]
    queue._running = first
    assert queue.position(first) is None, "a running job has no position"
    assert queue.position(second) == 1, "the running job is ahead of it"


async def test_the_estimate_adds_the_steps_left_of_everything_ahead() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    queue.timer = StepTimer(initial=0.5)
    running, waiting = make_job(steps=10, count=2), make_job(steps=4)
    queue._running = running
    running.steps_done = 5
    await queue.submit(waiting)
    assert queue.eta(running) == pytest.approx((20 - 5) * 0.5)
    assert queue.eta(waiting) == pytest.approx((15 + 4) * 0.5)
    waiting.finish("done")
    assert queue.eta(waiting) == 0.0


async def test_a_full_queue_refuses_with_a_retry_time() -> None:
    queue = LocalJobQueue(runner=None, max_queue=1)  # type: ignore[arg-type]
    queue.timer = StepTimer(initial=2.0)
    await queue.submit(make_job(steps=3))
    with pytest.raises(QueueFull, match=r"1 generation\(s\) are already waiting.*Retry in about 6 s"):
        await queue.ensure_room(make_job())


async def test_cancelling_a_waiting_job_takes_it_out_of_line_and_finishes_it(tmp_path: Path) -> None:
    settings = Settings(model="demo", data_dir=tmp_path, preload=False)
    store = LocalImageStore(settings.images_dir)
    runner = JobRunner(settings, store, StyleCatalog(settings), Telemetry.default())  # never loads a model
    queue = LocalJobQueue(runner, max_queue=5)
    job = make_job()
    await queue.submit(job)
    await queue.cancel(job)
    assert queue.depth == 0 and job.status == "cancelled" and job.done.is_set()
    record = await store.load_record(job.image_ids[0])
    assert record is not None and record.status == "cancelled", "its final record is saved"
    assert job.settled.is_set()


def owned(owner: str) -> Job:
    job = make_job()
    job.owner = owner
    return job


async def test_the_line_takes_turns_between_owners_and_positions_follow_it() -> None:
    queue = LocalJobQueue(runner=None, max_queue=10, max_per_user=4)  # type: ignore[arg-type]
    a = [owned("a") for _ in range(4)]
    for job in a:
        await queue.submit(job)
    b1, b2, c1 = owned("b"), owned("b"), owned("c")
    for job in (b1, b2, c1):
        await queue.submit(job)
    assert queue.waiting == (a[0], b1, c1, a[1], b2, a[2], a[3])
    assert [queue.position(job) for job in queue.waiting] == list(range(7))
    with pytest.raises(QueueFull, match=r"NOISETT_MAX_QUEUE_PER_USER=4"):
        await queue.ensure_room(owned("a"))
