"""The front of the application, behind the MCP surface and the CLI: it turns requests into jobs on the
queue, waits on them, and answers where an image stands. It never touches the engine: the queue's
runner (this process's GPU) or the GPU workers (the Azure queue) render the jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from noisett_mcp import __version__, sources
from noisett_mcp.auth.caller import LOCAL_OWNER
from noisett_mcp.config import Settings
from noisett_mcp.errors import ImageNotFound, NoisettError, RequestError
from noisett_mcp.gpu.runner import JobRunner
from noisett_mcp.jobs import Job, JobQueue, LocalJobQueue
from noisett_mcp.jobs.calls import Calls
from noisett_mcp.jobs.progress import ProgressFn, ProgressReporter
from noisett_mcp.jobs.records import heartbeat_age, image_progress, process_gone, save_records
from noisett_mcp.schemas import (
    FINISHED,
    VARIANT_DEFAULTS,
    GenerationRequest,
    GenerationSpec,
    ImageInfo,
    StyleInfo,
    default_geometry,
    new_image_id,
)
from noisett_mcp.sources import Source
from noisett_mcp.specs import resolve_spec
from noisett_mcp.storage import (
    ImageRecord,
    ImageStore,
    JobControl,
    StoredImage,
    check_image_id,
    open_store,
)
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import BASE_STYLE
from noisett_mcp.telemetry import Telemetry

log = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 3600.0
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
        self._tg: TaskGroup | None = None

    # --- lifecycle ---
    async def __aenter__(self) -> Noisett:
        self._tg = await anyio.create_task_group().__aenter__()
        self._tg.start_soon(self.queue.run)
        self._tg.start_soon(self.store.run)  # Blob: uploads what the spool holds, a restart's included
        self._tg.start_soon(self._sweep_images)
        if not self.queue.durable:  # GPU workers write their own heartbeats
            self._tg.start_soon(self._heartbeat)
        if (account := self.store.account) is not None:
            from noisett_mcp.storage.sync import keep_styles_synced

            self._tg.start_soon(keep_styles_synced, account, self.settings)
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

    async def _sweep_images(self) -> None:
        """Delete stored images older than NOISETT_RETENTION_DAYS: at start, then every hour."""
        days = self.settings.retention_days
        while days > 0:
            try:
                removed = await self.store.sweep(days)
            except Exception as exc:
                log.warning("retention sweep failed: %s", _first_line(exc))
            else:
                if removed:
                    log.info("retention: deleted %d image(s) older than %g days", removed, days)
            await anyio.sleep(RETENTION_SWEEP_SECONDS)

    async def _heartbeat(self) -> None:
        """Rewrite the records of this process's unfinished jobs every NOISETT_HEARTBEAT_SECONDS: another
        replica reading them knows the job is alive here (and sees its progress)."""
        while True:
            await anyio.sleep(self.settings.heartbeat_seconds)
            for job in {id(job): job for job in self._jobs.values()}.values():
                if not job.finished:
                    try:
                        await save_records(self.store, job)
                    except Exception as exc:  # the next beat tries again
                        log.warning("heartbeat of job %s failed: %s", job.id, _first_line(exc))

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
        source = await self._source(request, source_image, owner)
        spec = await self._resolve(request, source)
        count = len(spec.seeds)
        job = Job(id=new_image_id(), spec=spec, image_ids=[new_image_id() for _ in range(count)], owner=owner)
        job.source = source.data if source else None
        await self.queue.ensure_room(job)  # QueueFull goes straight back to the caller
        # Shielded: a caller who goes away mid-submit must leave all of the job's records or none
        # (storage calls are bounded by NOISETT_STORAGE_DEADLINE_SECONDS, so this cannot hang).
        with anyio.CancelScope(shield=True):
            # Records first: once queued, a worker elsewhere may write them, and its writes must win.
            await save_records(self.store, job)
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

    async def _source(self, request: GenerationRequest, given: bytes | None, owner: str) -> Source | None:
        """The checked source image of an image-to-image request, or None for text-to-image. A source
        image id goes through the same owner check as get_image: a foreign one reads as unknown."""
        if not sources.wanted(request, given=given is not None, variant=self.settings.resolved_variant):
            return None
        image_id = request.source_image_id
        if image_id is not None:
            view = await self.view(image_id, owner)
            if view.info.status != "done":
                raise RequestError(
                    f"image {image_id} is {view.info.status}: only a finished image can be a source "
                    "(get_image tells when it is done)"
                )
            given = (await self.load_image(image_id)).data
        assert given is not None  # one of the two was set
        return await anyio.to_thread.run_sync(sources.check, given, image_id)

    async def _resolve(self, request: GenerationRequest, source: Source | None = None) -> GenerationSpec:
        """The request with its style applied and every default filled in."""
        if not request.prompt.strip():
            raise RequestError("prompt is empty: describe the image to make, in 1 to 2000 characters")
        try:
            chosen = (await anyio.to_thread.run_sync(self.styles.refresh)).resolve(request.style)
        except LookupError as exc:
            raise RequestError(str(exc)) from exc
        return resolve_spec(request, self.settings, chosen, self.render_geometry(), source)

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

    async def cancel(self, image_id: str, canceller: str, *, any_owner: bool = False) -> ImageView:
        """Cancel the job that makes `image_id`, all its images: a queued job leaves the line, a running
        one stops at its next step. Only its owner may (or, with `any_owner`, an operator); to anyone
        else the id reads as unknown. Returns where the image stands afterwards."""
        check_image_id(image_id)
        record = await self.store.load_record(image_id)
        if record is None or not (any_owner or record.owner == canceller):
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
        return await self.view(image_id, record.owner)

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
            info = await self._elsewhere(record)
        return ImageView(await self._with_url(info) if info.status == "done" else info)

    async def _elsewhere(self, record: ImageRecord) -> ImageInfo:
        """An unfinished image whose job is not in this process: running on another replica while its
        owner's heartbeat is fresh; otherwise its process died, and the record is rewritten to say so
        (else it would say `running` forever)."""
        age = heartbeat_age(record)
        limit = self.settings.heartbeat_timeout_seconds
        if process_gone(record.worker):
            error = "interrupted by a server restart; generate it again"
        elif age is None or age > limit:
            error = f"the server making it stopped (no sign of life for over {limit:g} s); generate it again"
        else:
            return record.info()  # alive elsewhere: that replica has the live progress
        failed = record.model_copy(update={"status": "failed", "error": error})
        try:
            await self.store.save_record(failed)
        except Exception as exc:  # the answer stands; the next reader tries again
            log.warning("could not mark image %s failed: %s", record.id, _first_line(exc))
        return failed.info()

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

    def health(self) -> dict[str, Any]:
        if self.runner is not None:
            body = self.runner.health() | {"role": "standalone"}
        else:  # a front serves MCP at once; the GPU workers report their own health
            body = {
                "status": "ready",
                "role": "front",
                "model": self.settings.model,
                "variant": self.settings.resolved_variant,
                "version": __version__,
                "oldest_job_age_seconds": self.queue.oldest_age,
            }
        body["queue_depth"] = self.queue.depth
        body["running"] = self.queue.running is not None
        if (storage := self.store.health()) is not None:  # Blob: reachable or not, and what is spooled
            body["storage"] = storage
        return body


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
