"""A job's image records: how a job's state is written down, so that every process that reaches the
store can answer for its images."""

from __future__ import annotations

from datetime import UTC, datetime

from noisett_mcp.jobs.base import Job
from noisett_mcp.storage.base import ImageRecord, ImageStore


def image_progress(job: Job, index: int) -> float:
    """One image's share of its job's steps. Decoding and storing count as one more step:
    1.0 means stored."""
    if job.image_status(index) == "done":
        return 1.0
    steps = job.spec.denoise_steps
    if index in job.batch:  # the batch's images advance together, one step each per denoising step
        own = (job.steps_done - job.batch.start * steps) // len(job.batch)
    else:
        own = job.steps_done - index * steps
    return min(max(own, 0), steps) / (steps + 1)


def image_record(job: Job, index: int) -> ImageRecord:
    """Image `index` of `job` as it stands now."""
    spec = job.spec
    image_id = job.image_ids[index]
    return ImageRecord(
        id=image_id,
        uri=f"image://{image_id}",
        job_id=job.id,
        index=index,
        owner=job.owner,
        status=job.image_status(index),
        error=job.error,
        steps_done=job.steps_done,
        batch=[job.batch.start, job.batch.stop] if job.batch else [],
        progress=image_progress(job, index),
        seed=spec.seeds[index],
        **spec.model_dump(exclude={"seeds"}),
        created_at=job.created_at,
    )


def finished_record(job: Job, index: int, width: int, height: int, versions: dict[str, str]) -> ImageRecord:
    """The final record of a rendered image."""
    return image_record(job, index).model_copy(
        update={
            "status": "done",
            "progress": 1.0,
            "width": width,
            "height": height,
            "finished_at": now_iso(),
            "versions": versions,
        }
    )


async def save_records(store: ImageStore, job: Job) -> None:
    """Write the records of the job's unfinished images (finished ones keep their final record)."""
    async with job.records_lock:
        for index in range(job.images_done, len(job.image_ids)):
            await store.save_record(image_record(job, index))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
