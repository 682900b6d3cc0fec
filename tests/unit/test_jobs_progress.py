"""Progress notifications: strictly increasing, every step reported once, phases before the first."""

from __future__ import annotations

import pytest

from noisett_mcp.jobs.local import LocalJobQueue
from noisett_mcp.jobs.progress import ProgressReporter
from tests.unit.test_jobs_local import make_job

pytestmark = pytest.mark.anyio


async def test_progress_climbs_through_phases_then_reports_every_step() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    job = make_job(steps=3, count=2)
    await queue.submit(job)
    sent: list[tuple[float, float, str]] = []

    async def report(progress: float, total: float, message: str) -> None:
        sent.append((progress, total, message))

    reporter = ProgressReporter(queue, job, report)
    await reporter.update()
    await reporter.update()  # the same phase is not sent twice
    queue._waiting.clear()
    await reporter.update()
    job.steps_done = 4  # steps 1 to 4 ran between two polls
    await reporter.update()
    assert [m for _, _, m in sent] == [
        "queued, next",
        "starting",
        "image 1/2, step 1/3",
        "image 1/2, step 2/3",
        "image 1/2, step 3/3",
        "image 2/2, step 1/3",
    ]
    values = [p for p, _, _ in sent]
    assert values == sorted(values) and len(set(values)) == len(values), "strictly increasing"
    assert values[1] < 1 and {t for _, t, _ in sent} == {6}


async def test_without_a_progress_token_nothing_is_sent() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    await ProgressReporter(queue, make_job(), None).update()


async def test_a_batch_reports_one_notification_per_denoising_step_of_all_its_images() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    job = make_job(steps=2, count=4)
    sent: list[tuple[float, str]] = []

    async def report(progress: float, total: float, message: str) -> None:
        sent.append((progress, message))

    reporter = ProgressReporter(queue, job, report)
    job.steps_done = 1  # image 1 alone, then images 2-4 in one batch (a resumed job, or a fallback)
    await reporter.update()
    job.steps_done = 2
    await reporter.update()
    job.batch = range(1, 4)
    job.steps_done = 2 + 2 * 3  # both steps of the batch ran between two polls
    await reporter.update()
    assert sent == [
        (1, "image 1/4, step 1/2"),
        (2, "image 1/4, step 2/2"),
        (5, "images 2–4/4, step 1/2"),
        (8, "images 2–4/4, step 2/2"),
    ]


async def test_a_model_load_shorter_than_a_poll_is_still_reported_once() -> None:
    queue = LocalJobQueue(runner=None, max_queue=5)  # type: ignore[arg-type]
    job = make_job(steps=2)
    await queue.submit(job)
    sent: list[str] = []

    async def report(progress: float, total: float, message: str) -> None:
        sent.append(message)

    reporter = ProgressReporter(queue, job, report)
    await reporter.update()
    queue._waiting.clear()
    job.waited_for_model = True  # the runner took it before the model was ready; the load ended since
    await reporter.update()
    await reporter.update()
    job.steps_done = 1
    await reporter.update()
    assert sent == ["queued, next", "loading the model", "starting", "image 1/1, step 1/2"]
