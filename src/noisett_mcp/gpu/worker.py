"""`noisett-mcp worker`: a GPU worker that takes jobs from the Azure Storage queue.

It loads the model before it takes any job (a worker that cannot load reports it on /healthz and takes
none), claims one message at a time, keeps the claim alive while it renders, writes progress into the
image records, and deletes the message only once every image is in Blob storage.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

import anyio
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient
from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from noisett_mcp.config import Settings
from noisett_mcp.gpu.runner import JobRunner
from noisett_mcp.health import HealthReport, WorkerHealth, health_response
from noisett_mcp.jobs.azure import JobMessage, ensure_queue, queue_client
from noisett_mcp.jobs.base import Job
from noisett_mcp.jobs.records import save_records
from noisett_mcp.storage import open_store
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.telemetry import Telemetry

log = logging.getLogger(__name__)
tracer = trace.get_tracer("noisett_mcp.gpu.worker")

# Between empty receives: 0.1 s for 30 s after a job (a user's next request comes soon), then doubling
# every 10 s up to 2 s. Each receive is one Storage queue transaction (billed per 10,000, see the Queue
# Storage pricing page): 300 receives in the 30 s after a job, about 100 while the wait grows, then
# 1,800 an hour, half of the fixed 1 s poll's 3,600. KEDA stops an idle worker after its 5-minute
# cooldown: about 490 receives in those 5 minutes (the fixed poll: 300), a few hundredths of a cent.
FAST_POLL_SECONDS = 0.1
SLOW_POLL_SECONDS = 2.0
FAST_AFTER_WORK_SECONDS = 30.0
PROGRESS_SECONDS = 0.5  # how often progress reaches the records
CANCEL_CHECK_SECONDS = 1.0
LOAD_RETRY_SECONDS = 60.0


def idle_poll_delay(idle: float) -> float:
    """Seconds to wait before the next receive, `idle` seconds after the last job (or the start)."""
    if idle < FAST_AFTER_WORK_SECONDS:
        return FAST_POLL_SECONDS
    doublings = (idle - FAST_AFTER_WORK_SECONDS) / 10.0
    return min(SLOW_POLL_SECONDS, FAST_POLL_SECONDS * 2.0 ** (doublings + 1))


class Worker:
    def __init__(self, settings: Settings, client: QueueClient | None = None) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.runner = JobRunner(settings, self.store, StyleCatalog(settings), Telemetry.default())
        self.client = client or queue_client(settings)
        self.visibility = settings.queue_visibility_seconds
        self.current: Job | None = None
        self.jobs_done = 0
        self.stopping = False  # set on SIGTERM: finish the job in hand, take no more

    async def run(self) -> None:
        async with self.client, anyio.create_task_group() as tg:
            tg.start_soon(self.store.run)  # uploads what the spool holds, a restart's included
            if (account := self.store.account) is not None:
                from noisett_mcp.storage.sync import keep_styles_synced

                tg.start_soon(keep_styles_synced, account, self.settings)  # jobs render in synced styles
            try:
                await self._take_jobs()
            finally:
                tg.cancel_scope.cancel()
                self.runner.close()
                with anyio.CancelScope(shield=True):
                    await self.store.aclose()

    async def _take_jobs(self) -> None:
        await ensure_queue(self.client)
        while True:
            try:
                await self.runner.engine()
                break
            except Exception:  # logged and shown on /healthz; no job is taken meanwhile
                await anyio.sleep(LOAD_RETRY_SECONDS)
        log.info("worker ready: taking jobs from queue %s", self.settings.queue_name)
        last_work = time.monotonic()
        while not self.stopping:
            message = await self.client.receive_message(visibility_timeout=self.visibility)
            if message is None:
                await anyio.sleep(idle_poll_delay(time.monotonic() - last_work))
                continue
            await self.process(message)
            last_work = time.monotonic()

    async def process(self, message: QueueMessage) -> None:
        try:
            job = JobMessage.decode(message.content).job()
        except Exception as exc:  # not ours, or corrupt: it can never succeed
            log.error("dropping malformed queue message %s: %s", message.id, exc)
            await self.client.delete_message(message)
            return
        if (message.dequeue_count or 1) > self.settings.max_attempts:
            await self._give_up(job, message)
            return
        job.images_done = await self._images_stored(job)  # what a worker that died here already made
        job.steps_done = job.images_done * job.spec.denoise_steps
        if job.images_done == len(job.image_ids):  # it died after storing, before deleting the message
            await self.client.delete_message(message)
            return
        carrier = JobMessage.decode(message.content).trace
        with tracer.start_as_current_span(
            "noisett.worker.job", context=propagate.extract(carrier), attributes={"noisett.job_id": job.id}
        ):
            log.info("job %s: %d image(s), attempt %d", job.id, len(job.image_ids), message.dequeue_count)
            self.current = job
            control = await self.store.load_control(job.id)
            job.cancel_requested = bool(control and control.cancel)  # cancelled while it waited in line
            try:
                async with self._claim(message) as claim, anyio.create_task_group() as tg:
                    tg.start_soon(self._write_progress, job)
                    tg.start_soon(self._watch_cancel, job)
                    await self.runner.execute(job)
                    await self._wait_until_stored(job)
                    tg.cancel_scope.cancel()
                await self.client.delete_message(claim.message)
            finally:
                self.current = None
        self.jobs_done += 1
        await self.runner.release_memory()  # a GPU job takes seconds: no other job waits on this
        log.info("job %s %s", job.id, job.status)

    async def _give_up(self, job: Job, message: QueueMessage) -> None:
        attempts = (message.dequeue_count or 1) - 1
        error = (
            f"gave up after {attempts} attempts: a worker stopped each time while making it "
            "(out of memory, a crash or a restart)"
        )
        log.error("job %s: %s", job.id, error)
        job.finish("failed", error)
        await save_records(self.store, job)
        await self.client.delete_message(message)

    @contextlib.asynccontextmanager
    async def _claim(self, message: QueueMessage) -> AsyncIterator[_Claim]:
        """Keep the message invisible while the job runs, renewing well before the timeout."""
        claim = _Claim(message)
        async with anyio.create_task_group() as tg:

            async def renew() -> None:
                while True:
                    await anyio.sleep(self.visibility / 3)
                    claim.message = await self.client.update_message(
                        claim.message, visibility_timeout=self.visibility
                    )

            tg.start_soon(renew)
            try:
                yield claim
            finally:
                tg.cancel_scope.cancel()

    async def _write_progress(self, job: Job) -> None:
        """Progress as it changes, and a heartbeat at least every NOISETT_HEARTBEAT_SECONDS (while the
        model loads, say): the records show the job is alive."""
        written, beat = -1, time.monotonic()
        while True:
            await anyio.sleep(PROGRESS_SECONDS)
            due = time.monotonic() - beat >= self.settings.heartbeat_seconds
            if job.status == "running" and (job.steps_done != written or due):
                written, beat = job.steps_done, time.monotonic()
                await save_records(self.store, job)

    async def _watch_cancel(self, job: Job) -> None:
        while not job.cancel_requested:
            await anyio.sleep(CANCEL_CHECK_SECONDS)
            control = await self.store.load_control(job.id)
            if control is not None and control.cancel:
                job.cancel_requested = True  # the engine stops at its next step

    async def _images_stored(self, job: Job) -> int:
        """How many of the job's images, from the first, are already stored."""
        stored = 0
        for image_id in job.image_ids:
            record = await self.store.load_record(image_id)
            if record is None or record.status != "done":
                break
            stored += 1
        return stored

    async def _wait_until_stored(self, job: Job) -> None:
        """Until the spool holds nothing of this job: then it is all in Blob storage."""
        while True:
            pending = [i for i in job.image_ids if await self.store.is_pending(i)]
            if not pending:
                return
            await anyio.sleep(1.0)

    def health(self) -> HealthReport:
        return HealthReport(
            role="worker",
            model=self.settings.model,
            variant=self.settings.resolved_variant,
            engine=self.runner.health(),
            storage=self.store.health(),
            worker=WorkerHealth(self.jobs_done, self.current.id if self.current else None),
        )


class _Claim:
    def __init__(self, message: QueueMessage) -> None:
        self.message = message


def health_app(worker: Worker) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return health_response(worker.health())

    return Starlette(routes=[Route("/healthz", health), Route("/health", health)])


async def serve_worker(settings: Settings, health_port: int | None) -> None:
    """Run the worker, with its health endpoint when a port is given. SIGTERM (scale-in, a new
    revision) lets the job in hand finish, so that stopping does not count as a failed attempt."""
    worker = Worker(settings)
    async with anyio.create_task_group() as tg:

        async def stop_on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    if worker.current is None:
                        tg.cancel_scope.cancel()
                        return
                    log.info("stopping after job %s (SIGTERM)", worker.current.id)
                    worker.stopping = True

        tg.start_soon(stop_on_sigterm)
        if health_port is not None:
            import uvicorn

            config = uvicorn.Config(
                health_app(worker), host=settings.host, port=health_port, log_level="warning", lifespan="off"
            )
            tg.start_soon(uvicorn.Server(config).serve)
        await worker.run()
        tg.cancel_scope.cancel()
