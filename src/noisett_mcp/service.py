"""The front of the application, behind the MCP surface and the CLI: it turns requests into jobs on the
queue, waits on them, and answers where an image stands. It never touches the engine: the queue's
runner (this process's GPU) or the GPU workers (the Azure queue) render the jobs.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from noisett_mcp import sources, upkeep
from noisett_mcp.auth.caller import LOCAL_OWNER
from noisett_mcp.config import Settings
from noisett_mcp.errors import ImageNotFound, NoisettError, RequestError
from noisett_mcp.gpu.runner import JobRunner
from noisett_mcp.health import HealthReport, QueueHealth
from noisett_mcp.jobs import Job, JobQueue, LocalJobQueue
from noisett_mcp.jobs.calls import Calls, RequestId
from noisett_mcp.jobs.progress import ProgressFn, ProgressReporter
from noisett_mcp.jobs.records import image_progress, save_records
from noisett_mcp.replicas import judge_elsewhere
from noisett_mcp.schemas import (
    FINISHED,
    VARIANT_DEFAULTS,
    GenerationRequest,
    GenerationSpec,
    ImageInfo,
    Status,
    StyleInfo,
    default_geometry,
    new_image_id,
)
from noisett_mcp.specs import resolve_spec, with_source
from noisett_mcp.storage import (
    ImageStore,
    JobControl,
    StoredImage,
    check_image_id,
    open_store,
)
from noisett_mcp.storage.local import LocalImageStore
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import BASE_STYLE
from noisett_mcp.telemetry import Telemetry

log = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 5.0  # cancel_image waits this long for a running job to stop at its next step

__all__ = ["ImageView", "Noisett"]


@dataclass(frozen=True)
class ImageView:
    """Where one image stands: its record, plus live progress while its job runs here."""

    info: ImageInfo
    eta_seconds: float | None = None
    queue_position: int | None = None

    @property
    def finished(self) -> bool:
        return self.info.status in FINISHED


class Noisett:
    def __init__(
        self, settings: Settings, store: ImageStore | None = None, telemetry: Telemetry | None = None
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.telemetry = telemetry or Telemetry.default()
        self.styles = StyleCatalog(settings)
        self.runner, self.queue = open_queue(settings, self.store, self.styles, self.telemetry)
        self.telemetry.observe_queue(self.queue)
        self.calls = Calls(self.queue, self.store)  # the calls in flight, for a client's cancel
        self._jobs: dict[str, Job] = {}  # by image id, while this process knows the job
        self._decoders = anyio.CapacityLimiter(sources.DECODE_THREADS)  # the threads sources decode on
        self._tg: TaskGroup | None = None

    # --- lifecycle ---
    async def __aenter__(self) -> Noisett:
        self._tg = await anyio.create_task_group().__aenter__()
        self._tg.start_soon(self.queue.run)
        self._tg.start_soon(self.store.run)  # Blob: uploads what the spool holds, a restart's included
        # GPU workers write their own heartbeats: a front beats for nothing.
        upkeep.start(self._tg, self.settings, self.store, self._live_jobs, heartbeats=not self.queue.durable)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        self._tg = None
        await self.queue.aclose()
        await self.store.aclose()

    @property
    def is_front(self) -> bool:
        """A front only queues jobs (NOISETT_QUEUE=azure): GPU workers run them."""
        return self.queue.durable

    def start_preload(self) -> None:
        """Load the model in the background (idempotent). Called once the client's handshake is done,
        so that the torch import never slows `initialize`."""
        if self.runner is not None and self._tg is not None:
            self.runner.start_preload(self._tg)

    def _live_jobs(self) -> list[Job]:
        """The jobs this process follows, each once (a job is remembered under each of its images)."""
        return list({id(job): job for job in self._jobs.values()}.values())

    # --- what the MCP surface asks besides requests ---
    def track_call(self, owner: str, request_id: RequestId, job: Job) -> AbstractAsyncContextManager[None]:
        """Follow a request's job while its call waits, so a client's cancel finds it (jobs/calls.py)."""
        return self.calls.track(owner, request_id, job)

    async def cancel_call(self, owner: str, request_id: RequestId) -> bool:
        """A client's `notifications/cancelled` for one of its calls; False when no such call runs."""
        return await self.calls.cancel(owner, request_id)

    def store_account_url(self) -> str | None:
        """The URL of the Azure storage account behind the store (SAS links come from its host), or None
        for the local folder."""
        account = self.store.account
        return account.client.url if account is not None else None

    def serve_remote_clients(self) -> None:
        """Over HTTP the clients are elsewhere: a server path is no link for them, so the local folder
        gives no `file:` URL (Blob's SAS links are unchanged)."""
        if isinstance(self.store, LocalImageStore):
            self.store.file_urls = False

    # --- requests ---
    def render_geometry(self) -> tuple[int, int]:
        """(side, multiple) of the rendered size, known before the model loads."""
        if self.runner is not None:
            return self.runner.render_geometry()
        return default_geometry(self.settings)

    async def list_styles(self) -> list[StyleInfo]:
        """The base style, then every style for this model. Re-reads the styles folder (off the loop)."""
        view = await anyio.to_thread.run_sync(self.styles.refresh)
        steps, guidance = VARIANT_DEFAULTS[self.settings.resolved_variant]
        return [
            StyleInfo(
                name=BASE_STYLE,
                title="No style",
                description="The base model with no brand style applied: use it for neutral images.",
                strength=0.0,
                aspect_ratio="1:1",
                steps=steps,
                guidance=guidance,
            ),
            *(style.info() for style in view.styles.values()),
        ]

    async def style_preview(self, name: str) -> bytes:
        """The preview image of an offered style; raise LookupError if it has none."""
        style = (await anyio.to_thread.run_sync(self.styles.refresh)).styles.get(name)
        path = style.preview_file if style else None
        if path is None or not path.is_file():
            raise LookupError(f"style {name!r} has no preview image; list_styles links the ones that do")
        return await anyio.Path(path).read_bytes()

    async def submit(
        self, request: GenerationRequest, owner: str = LOCAL_OWNER, source_image: bytes | None = None
    ) -> Job:
        """Queue a generation and return its job; raise RequestError, QueueFull or ModelUnavailable at
        once. `source_image` is the bytes of a source image given directly (request.source_image_id
        names one of the owner's images instead)."""
        if self.runner is not None and self.runner.unavailable is not None:
            raise self.runner.unavailable  # the model cannot load here: say so, do not queue
        wants_source = sources.wanted(
            request, given=source_image is not None, variant=self.settings.resolved_variant
        )
        spec = await self._resolve(request)
        count = len(spec.seeds)
        job = Job(id=new_image_id(), spec=spec, image_ids=[new_image_id() for _ in range(count)], owner=owner)
        # Room first: a caller at the cap, or a full queue, is refused before any source is decoded.
        await self.queue.ensure_room(job)  # QueueFull goes straight back; a front reserves the slot
        if wants_source:
            try:
                await self._add_source(job, request, source_image)
            except BaseException:
                job.finish("failed", "its source image was refused")  # frees a front's reserved slot
                raise
        # Shielded: a caller who goes away mid-submit must leave all of the job's records or none
        # (storage calls are bounded by NOISETT_STORAGE_DEADLINE_SECONDS, so this cannot hang).
        with anyio.CancelScope(shield=True):
            # Records first: once queued, a worker elsewhere may write them, and its writes must win.
            try:
                await save_records(self.store, job)
            except BaseException:
                job.finish("failed", "its records could not be saved")  # frees the reserved slot
                raise
            try:
                await self.queue.submit(job)
            except BaseException as exc:  # e.g. QueueFull from a racing submit: the records say so
                job.finish("failed", str(exc) if isinstance(exc, NoisettError) else "it could not be queued")
                await save_records(self.store, job)
                raise
            self.telemetry.job_queued(job)
            self._remember(job)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # the caller left during submit: nobody waits for it
                await self.queue.cancel(job)
            raise
        return job

    def _remember(self, job: Job) -> None:
        """Follow the job here until its final records are saved; then the store answers for it and it
        leaves memory (an abandoned generation must not stay forever)."""
        for image_id in job.image_ids:
            self._jobs[image_id] = job

        async def forget() -> None:
            await job.settled.wait()
            for image_id in job.image_ids:
                self._jobs.pop(image_id, None)

        if self._tg is not None:  # a service never started runs no jobs, so none would settle
            self._tg.start_soon(forget)

    async def _add_source(self, job: Job, request: GenerationRequest, given: bytes | None) -> None:
        """Check the image-to-image request's source (decoded once, in a worker thread) and add it to
        the job. A source image id goes through the same owner check as get_image: a foreign one reads
        as unknown. Where this process renders the job, the same decode fits it to the rendered size."""
        image_id = request.source_image_id
        if image_id is not None:
            view = await self.view(image_id, job.owner)
            if view.info.status != "done":
                raise RequestError(
                    f"image {image_id} is {view.info.status}: only a finished image can be a source "
                    "(get_image tells when it is done)"
                )
            given = (await self.load_image(image_id)).data
        assert given is not None  # one of the two was set
        fit_to = None if self.queue.durable else (job.spec.width, job.spec.height)
        check = partial(sources.check, given, image_id, fit_to)
        source = await anyio.to_thread.run_sync(check, limiter=self._decoders)
        job.spec = with_source(job.spec, request, source)
        job.source, job.fitted_source = source.data, source.fitted

    async def _resolve(self, request: GenerationRequest) -> GenerationSpec:
        """The request with its style applied and every default filled in (its source comes later)."""
        if not request.prompt.strip():
            raise RequestError("prompt is empty: describe the image to make, in 1 to 2000 characters")
        try:
            chosen = (await anyio.to_thread.run_sync(self.styles.refresh)).resolve(request.style)
        except LookupError as exc:
            raise RequestError(str(exc)) from exc
        return resolve_spec(request, self.settings, chosen, self.render_geometry())

    async def wait(self, job: Job, timeout: float, report: ProgressFn | None = None) -> None:
        """Wait up to `timeout` s for the job, reporting its queue position, then every denoising step.
        If the caller is cancelled, the job is cancelled with it."""
        progress = ProgressReporter(self.queue, job, report)
        try:
            with anyio.move_on_after(timeout):
                while not job.finished:
                    await progress.update()
                    # Steps come fast; a queue position changes only when a job starts.
                    with anyio.move_on_after(0.05 if job.status == "running" else 0.25):
                        await job.done.wait()
            await progress.update()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.queue.cancel(job)  # the client gave up on this request: stop its work
            raise

    async def cancel(self, image_id: str, canceller: str, *, operator: bool = False) -> Status:
        """Cancel the job that makes `image_id`, all its images: a queued job leaves the line, a running
        one stops at its next step. Only its owner may, or an `operator` (a NOISETT_CANCEL_ROLES holder)
        within their tenant, or any tenant with NOISETT_CANCEL_ROLES_SCOPE=all; to anyone else the id
        reads as unknown. Returns the image's status afterwards: its state only, for an operator too."""
        check_image_id(image_id)
        record = await self.store.load_record(image_id)
        if record is None or not self._may_cancel(record.owner, canceller, operator):
            raise ImageNotFound(image_id)
        if not record.finished:
            job = self._jobs.get(image_id)
            if job is not None:
                await self.queue.cancel(job)
                if not self.queue.durable:  # here it stops within a step; a worker takes a poll or two
                    with anyio.move_on_after(CANCEL_WAIT_SECONDS):
                        await job.done.wait()
            elif self.queue.durable:  # queued through another front: the worker reads the control record
                await self.store.save_control(record.job_id, JobControl(cancel=True))
        return (await self.view(image_id, record.owner)).info.status

    def _may_cancel(self, owner: str, canceller: str, operator: bool) -> bool:
        """Owners cancel their jobs; an operator those of their own tenant, or of all with scope `all`."""
        if owner == canceller:
            return True
        if not operator:
            return False
        if self.settings.cancel_roles_scope == "all":
            return True
        tenant, _, user = owner.partition("/")
        return bool(user) and canceller.startswith(f"{tenant}/")

    async def view(self, image_id: str, viewer: str = LOCAL_OWNER) -> ImageView:
        """Where an image stands, for `viewer` (an owner id); raise InvalidImageId or ImageNotFound.
        An image the viewer may not see is reported exactly like one that does not exist."""
        check_image_id(image_id)
        job = self._jobs.get(image_id)
        record = await self.store.load_record(image_id)
        if record is None or not self._visible(record.owner, viewer):
            raise ImageNotFound(image_id)
        info = record.info()
        if job is not None:
            # The live job is fresher than the stored record, which is written after each change.
            index = job.image_ids.index(image_id)
            status = job.image_status(index)
            if status == "done":
                return ImageView(await self._with_url(info))
            if status in FINISHED:
                return ImageView(info.model_copy(update={"status": status, "error": job.error}))
            info = info.model_copy(update={"status": status, "progress": image_progress(job, index)})
            return ImageView(info, self.queue.eta(job), self.queue.position(job))
        if info.status not in FINISHED and not self.queue.durable:
            info = await judge_elsewhere(self.store, record, self.settings.heartbeat_timeout_seconds)
        return ImageView(await self._with_url(info) if info.status == "done" else info)

    async def _with_url(self, info: ImageInfo) -> ImageInfo:
        """The store's link to the full image, made per view and never stored: a SAS link expires."""
        return info.model_copy(update={"url": await self.store.image_url(info.id)})

    def _visible(self, owner: str, viewer: str) -> bool:
        """Owners see their images; with NOISETT_IMAGE_SHARING=tenant, so does their whole tenant."""
        if owner == viewer:
            return True
        tenant, _, user = owner.partition("/")
        return self.settings.image_sharing == "tenant" and bool(user) and viewer.startswith(f"{tenant}/")

    async def load_image(self, image_id: str) -> StoredImage:
        """The image's bytes; callers check with view() first that the caller may see it."""
        stored = await self.store.load_image(check_image_id(image_id))
        if stored is None:
            raise ImageNotFound(image_id)
        return stored

    def health(self) -> HealthReport:
        """A front serves MCP at once, and its GPU workers report their own engines' health."""
        queue = self.queue
        return HealthReport(
            role="standalone" if self.runner is not None else "front",
            model=self.settings.model,
            variant=self.settings.resolved_variant,
            engine=self.runner.health() if self.runner is not None else None,
            queue=QueueHealth(queue.depth, queue.running is not None, queue.oldest_age),
            storage=self.store.health(),  # Blob: reachable or not, and what is spooled
        )


def open_queue(
    settings: Settings, store: ImageStore, styles: StyleCatalog, telemetry: Telemetry
) -> tuple[JobRunner | None, JobQueue]:
    """This process's GPU runner (None on a front) and the queue the settings ask for: an Azure Storage
    queue to GPU workers (NOISETT_QUEUE=azure), or this process's own GPU. The Azure SDK is imported
    only for the first."""
    if settings.queue == "azure":
        from noisett_mcp.jobs.azure import AzureJobQueue

        return None, AzureJobQueue(settings, store)
    runner = JobRunner(settings, store, styles, telemetry)
    return runner, LocalJobQueue(runner, settings.max_queue, settings.max_queue_per_user)
