"""A job's image records: how a job's state is written down, so that every process that reaches the
store can answer for its images."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime

from noisett_mcp.jobs.base import Job
from noisett_mcp.storage.base import ImageRecord, ImageStore

# This process, as records name it: host, pid, and a token that tells a restarted pid 1 from the last.
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def process_gone(worker: str | None) -> bool:
    """True when `worker` names a process of this host that is no longer running (a restart)."""
    host, _, rest = (worker or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or worker == PROCESS_ID:
        return False
    if int(pid) == os.getpid():
        return True  # our pid, another token: the process before a restart
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def heartbeat_age(record: ImageRecord) -> float | None:
    """Seconds since the record's owner last wrote it, or None for a record without a heartbeat."""
    if record.heartbeat_at is None:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(record.heartbeat_at)).total_seconds()


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
        worker=PROCESS_ID,
        heartbeat_at=now_iso(),
    )


def finished_record(
    job: Job, index: int, width: int, height: int, versions: dict[str, str], batched: bool = False
) -> ImageRecord:
    """The final record of a rendered image; `batched` when it shared its pipeline call with others."""
    return image_record(job, index).model_copy(
        update={
            "status": "done",
            "progress": 1.0,
            "width": width,
            "height": height,
            "finished_at": now_iso(),
            "versions": versions,
            "batched": batched,
        }
    )


async def save_records(store: ImageStore, job: Job) -> None:
    """Write the records of the job's unfinished images (finished ones keep their final record)."""
    async with job.records_lock:
        for index in range(job.images_done, len(job.image_ids)):
            await store.save_record(image_record(job, index))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
