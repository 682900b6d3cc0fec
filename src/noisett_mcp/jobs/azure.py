"""Azure Storage Queues between an always-on MCP front and GPU workers that scale to zero. No torch here.

The front (`AzureJobQueue`) sends each job as one message and follows it through the image records,
which every replica can read. A worker (`noisett_mcp.gpu.worker`) claims a message (it turns invisible),
keeps the claim alive while it renders, writes status and progress into those records, and deletes the
message only once the images are stored. If a worker dies, the message reappears after its visibility
timeout and another worker takes the job; a message delivered more than `NOISETT_MAX_ATTEMPTS` times
is marked failed instead of looping forever.

Fairness: a Storage queue hands out messages roughly in arrival order and cannot be reordered, so the
front cannot interleave callers there. What it can do is cap each caller's share: a front refuses a
caller who already has NOISETT_MAX_QUEUE_PER_USER jobs queued through it. So a job waits behind at most
that many jobs of any one other caller, in arrival order, not round-robin.

What the caps guarantee:
- Within one front the per-user cap is exact under any concurrency: `ensure_room` reserves the caller's
  slot before its first await, and a reservation counts until the job is sent, fails or is given up.
- The whole-queue cap (NOISETT_MAX_QUEUE) compares the Storage queue's approximate length plus this
  front's reserved, not yet sent jobs: exact for one front, give or take Storage's approximation.
- Across N fronts each counts only its own callers' jobs: a caller may hold up to N times the per-user
  cap (one per front their requests reach), and the queue may pass NOISETT_MAX_QUEUE by the jobs other
  fronts are sending at that moment. Nothing shared is locked per request.

Cancelling is a record too: the front writes the job's `JobControl` (its own key, beside the image
records), and the worker checks it while it renders.

Importing this module costs the Azure SDK's import time: the service imports it only in front mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from azure.core.exceptions import ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.storage.queue.aio import QueueClient
from opentelemetry import propagate

from noisett_mcp.config import Settings
from noisett_mcp.errors import QueueFull, StorageUnavailable, UserQueueFull
from noisett_mcp.jobs.base import Job, Runner, StepTimer
from noisett_mcp.schemas import FINISHED, GenerationSpec
from noisett_mcp.storage.base import ImageRecord, ImageStore, JobControl

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the front reads the records of the jobs it waits on
LENGTH_SECONDS = 2.0  # how often it refreshes the queue's length and oldest message
READ_DEADLINE_SECONDS = 10.0


def queue_client(settings: Settings) -> QueueClient:
    """The job queue: through the connection string, or the queue endpoint and DefaultAzureCredential."""
    name = settings.queue_name
    if settings.azure_storage_connection_string:
        return QueueClient.from_connection_string(
            settings.azure_storage_connection_string.get_secret_value(), name
        )
    from azure.identity.aio import DefaultAzureCredential

    return QueueClient(settings.resolved_queue_account_url, name, credential=DefaultAzureCredential())


async def ensure_queue(client: QueueClient) -> None:
    with contextlib.suppress(ResourceExistsError):  # another replica made it
        await client.create_queue()


@dataclass(frozen=True)
class JobMessage:
    """The wire form of a job: everything a worker needs to render it and to link its trace."""

    job_id: str
    image_ids: list[str]
    owner: str
    spec: dict[str, Any]
    created_at: str
    trace: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobMessage:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the worker's span joins the front's trace
        return cls(job.id, job.image_ids, job.owner, job.spec.model_dump(), job.created_at, carrier)

    def encode(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def decode(cls, content: str) -> JobMessage:
        return cls(**json.loads(content))

    def job(self) -> Job:
        return Job(
            id=self.job_id,
            spec=GenerationSpec.model_validate(self.spec),
            image_ids=list(self.image_ids),
            owner=self.owner,
            created_at=self.created_at,
        )


class AzureJobQueue:
    """The front's side of the queue: the `JobQueue` seam, with the GPU work done elsewhere."""

    durable = True  # jobs outlive this process: a record left `running` is still being worked on
    runner: Runner | None = None  # the GPU workers render

    def __init__(self, settings: Settings, store: ImageStore, client: QueueClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.client = client or queue_client(settings)
        self.max_queue = settings.max_queue
        self.timer = StepTimer()
        self.length = 0
        self.oldest_age: float | None = None
        self._followed: dict[str, Job] = {}
        # Jobs whose slot `ensure_room` reserved and that are not yet sent: they count against the caps.
        self._reserved: dict[str, Job] = {}
        self._ready = False

    # --- JobQueue ---
    @property
    def depth(self) -> int:
        return self.length

    @property
    def running(self) -> Job | None:
        return None  # runs happen on the workers

    @property
    def waiting(self) -> tuple[Job, ...]:
        return ()

    async def ensure_room(self, job: Job) -> None:
        """Reserve the job's slot, or raise UserQueueFull or QueueFull. The per-user check and the
        reservation happen before the first await, so concurrent requests of one caller cannot all pass
        it; the reservation ends when `submit` sends the job, or when the job finishes unsent (the
        service marks a job it gives up on failed)."""
        self._reserved = {key: j for key, j in self._reserved.items() if j.status == "queued"}
        limit = self.settings.max_queue_per_user
        mine = self._queued_of(job.owner)
        if mine >= limit:
            raise UserQueueFull(mine, limit, self.timer.estimate(self.length * job.total_steps))
        self._reserved[job.id] = job
        try:
            async with self._deadline("read the job queue"):
                await self._ensure_ready()
                properties = await self.client.get_queue_properties()
            self.length = properties.approximate_message_count or 0
            sending = sum(1 for other in self._reserved.values() if other is not job)
            if self.length + sending >= self.max_queue:
                waiting = self.length + sending
                raise QueueFull(waiting, self.timer.estimate(waiting * job.total_steps))
        except BaseException:
            del self._reserved[job.id]
            raise

    def _queued_of(self, owner: str) -> int:
        """The owner's jobs queued through this front: followed ones, and those reserved but unsent."""
        jobs = [*self._followed.values(), *self._reserved.values()]
        return sum(1 for j in jobs if j.owner == owner and j.status == "queued")

    async def submit(self, job: Job) -> None:
        try:
            spec = job.spec
            if job.source is not None and spec.source_image_id is None and spec.source_sha256 is not None:
                # A message holds 64 KiB: the source's bytes go to the store, and the worker loads them
                # from there by sha256 (a source image of the caller's is already stored, under its id).
                await self.store.save_source(spec.source_sha256, job.source)
            async with self._deadline("queue the job"):
                await self.client.send_message(JobMessage.of(job).encode())
            self.length += 1
            self._followed[job.id] = job
        finally:
            self._reserved.pop(job.id, None)

    async def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if not job.finished:
            await self.store.save_control(job.id, JobControl(cancel=True))

    def position(self, job: Job) -> int | None:
        # Storage Queues tell only their length: the messages ahead are at most the others in it.
        return max(self.length - 1, 0) if job.status == "queued" else None

    def eta(self, job: Job) -> float:
        if job.finished:
            return 0.0
        ahead = (self.position(job) or 0) * job.total_steps
        return self.timer.estimate(ahead + job.total_steps - job.steps_done)

    async def aclose(self) -> None:
        await self.client.close()

    async def run(self) -> None:
        """Follow the jobs submitted here through their records, and the queue's length. Each read has
        a deadline: one hung request must not stall every waiting client."""
        await self._ensure_ready()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._every, LENGTH_SECONDS, self._refresh_length)
            tg.start_soon(self._every, POLL_SECONDS, self._follow_all)

    async def _every(self, seconds: float, action: Any) -> None:
        while True:
            with anyio.move_on_after(READ_DEADLINE_SECONDS) as scope:
                await action()
            if scope.cancelled_caught:
                log.warning(
                    "reading the job queue's state took over %s s; trying again", READ_DEADLINE_SECONDS
                )
            await anyio.sleep(seconds)

    async def _follow_all(self) -> None:
        for job in list(self._followed.values()):
            await self._follow(job)

    # --- internals ---
    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        """A request waits on the queue no longer than NOISETT_STORAGE_DEADLINE_SECONDS."""
        try:
            with anyio.fail_after(self.settings.storage_deadline_seconds):
                yield
        except (TimeoutError, ServiceRequestError, ServiceResponseError, OSError) as exc:
            raise StorageUnavailable(
                f"cannot {what}: the storage queue is unreachable right now ({type(exc).__name__}); "
                "try again in a minute"
            ) from exc

    async def _ensure_ready(self) -> None:
        if not self._ready:
            await ensure_queue(self.client)
            self._ready = True

    async def _refresh_length(self) -> None:
        try:
            properties = await self.client.get_queue_properties()
            self.length = properties.approximate_message_count or 0
            oldest = await self.client.peek_messages(max_messages=1)
            inserted = oldest[0].inserted_on if oldest else None
            self.oldest_age = (datetime.now(UTC) - inserted).total_seconds() if inserted else None
        except Exception as exc:  # storage hiccups must not stop following jobs
            log.warning("cannot read queue %s: %s", self.settings.queue_name, type(exc).__name__)

    async def _follow(self, job: Job) -> None:
        """Bring a job up to date from its image records, which the worker writes."""
        try:
            loaded = [await self.store.load_record(image_id) for image_id in job.image_ids]
        except Exception as exc:
            log.warning("cannot read records of job %s: %s", job.id, type(exc).__name__)
            return
        records: list[ImageRecord] = [r for r in loaded if r is not None]
        if len(records) < len(job.image_ids):
            return
        statuses = [r.status for r in records]
        job.images_done = sum(1 for s in statuses if s == "done")
        latest = max(records, key=lambda r: r.steps_done)
        job.steps_done, job.batch = latest.steps_done, range(*latest.batch) if latest.batch else range(0)
        if "running" in statuses and job.status == "queued":
            job.status, job.started = "running", time.monotonic()
        if all(s in FINISHED for s in statuses):
            failed = [r for r in records if r.status != "done"]
            if failed:
                job.finish(failed[0].status, failed[0].error)
            else:
                if job.started is not None:
                    self.timer.record(time.monotonic() - job.started, job.total_steps)
                job.steps_done = job.total_steps
                job.finish("done")
            job.settle()  # the workers wrote the final records
            del self._followed[job.id]
