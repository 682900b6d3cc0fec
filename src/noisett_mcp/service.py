"""The application core behind the MCP surface: it turns requests into jobs, runs them on the engine,
keeps their images in the store, and answers where an image stands.

It never imports torch itself: the engine is imported inside the worker thread that loads it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskGroup

from noisett_mcp import __version__, images
from noisett_mcp.config import Settings
from noisett_mcp.engine.jobs import GenerationCancelled, Job, JobQueue, LocalJobQueue, QueueFull
from noisett_mcp.models import (
    DEMO_RENDER_SIDE,
    FINISHED,
    MAX_SEED,
    VARIANT_DEFAULTS,
    GenerationSpec,
    ImageInfo,
    StyleInfo,
    new_image_id,
    rendered_size,
)
from noisett_mcp.storage import ImageStore, StoredImage, open_store
from noisett_mcp.storage.base import check_image_id
from noisett_mcp.styles import BASE_STYLE, MAX_STRENGTH, Style, StyleCatalog, StyleRefused, StyleUnavailable
from noisett_mcp.telemetry import Telemetry

if TYPE_CHECKING:
    from noisett_mcp.engine.pipeline import Engine
    from noisett_mcp.storage.blob import BlobAccount

log = logging.getLogger(__name__)

EngineState = Literal["idle", "loading", "ready", "error"]
ProgressFn = Callable[[float, float, str], Awaitable[None]]
RETENTION_SWEEP_SECONDS = 3600.0

__all__ = ["ImageNotFound", "ImageView", "Noisett", "QueueFull", "RequestError"]


class RequestError(ValueError):
    """Bad input the caller can fix; the message says what is allowed."""


class ImageNotFound(LookupError):
    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"no image with id {image_id!r}: it was never made here, or it has expired. "
            "Ids come from generate_image."
        )


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
        self.queue: JobQueue = (
            _azure_queue(settings, self.store)
            if settings.queue == "azure"
            else LocalJobQueue(self.execute, settings.max_queue)
        )
        self.telemetry = telemetry or Telemetry.default()
        self.telemetry.observe_queue(self.queue)
        self._jobs: dict[str, Job] = {}  # by image id, while this process knows the job
        self._engine: Engine | None = None
        self.engine_state: EngineState = "idle"
        self.engine_error: str | None = None
        self._engine_lock = anyio.Lock()
        self.styles = StyleCatalog(settings)
        self._tg: TaskGroup | None = None

    # --- lifecycle ---
    async def __aenter__(self) -> Noisett:
        self._tg = await anyio.create_task_group().__aenter__()
        self._tg.start_soon(self.queue.run)
        self._tg.start_soon(self.store.run)  # Blob: uploads what the spool holds, a restart's included
        self._tg.start_soon(self._sweep_images)
        if self.settings.blob_enabled:
            self._tg.start_soon(self._sync_styles_periodically)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        self._tg = None
        await self.store.aclose()

    def start_preload(self) -> None:
        """Load the model in the background (idempotent). Called once the client's handshake is done,
        so that the torch import never slows `initialize`."""
        if self.is_front:
            return  # the GPU workers load the model
        if self.settings.preload and self.engine_state == "idle" and self._tg is not None:
            self._tg.start_soon(self._preload)

    @property
    def is_front(self) -> bool:
        """A front only queues jobs (NOISETT_QUEUE=azure): GPU workers run them."""
        return self.queue.durable

    async def _preload(self) -> None:
        with contextlib.suppress(Exception):  # recorded in engine_state; generation reports it
            await self.engine()

    async def engine(self) -> Engine:
        """The loaded engine, loading it on first use (once per process)."""
        async with self._engine_lock:
            if self._engine is None:
                self.engine_state, self.engine_error = "loading", None
                try:
                    settings = await self._model_settings()
                    self._engine = await anyio.to_thread.run_sync(_load_engine, settings)
                except Exception as exc:
                    self.engine_state, self.engine_error = "error", f"{type(exc).__name__}: {exc}"
                    log.exception("model %s failed to load", self.settings.model)
                    self.telemetry.error("load", exc)
                    raise
                self.engine_state = "ready"
            return self._engine

    async def _model_settings(self) -> Settings:
        """The settings the engine loads with: a `blob://CONTAINER/PREFIX` model is first synced to the
        model cache (unchanged files skipped by size and ETag) and loaded from there."""
        if not self.settings.blob_model:
            return self.settings
        from noisett_mcp.storage.sync import sync_model

        folder = await sync_model(self._blob_account(), self.settings)
        return self.settings.model_copy(
            update={"model": str(folder), "variant": self.settings.resolved_variant}
        )

    def _blob_account(self) -> BlobAccount:
        account = getattr(self.store, "account", None)
        if account is None:
            raise RuntimeError(
                f"NOISETT_MODEL={self.settings.model} is in Azure Blob Storage: set "
                "AZURE_STORAGE_CONNECTION_STRING or NOISETT_BLOB_ACCOUNT_URL"
            )
        return account

    async def sync_styles(self) -> bool:
        """Mirror the Blob styles container into the styles folder, downloading only what changed
        (by ETag); True when files changed. The style catalog reads that folder."""
        from noisett_mcp.storage.sync import sync_styles

        result = await sync_styles(self._blob_account(), self.settings)
        return result.changed

    async def _sync_styles_periodically(self) -> None:
        while True:
            try:
                await self.sync_styles()
            except Exception as exc:  # storage away: keep the styles we have, try again later
                log.warning("styles sync failed: %s", _first_line(exc))
            await anyio.sleep(self.settings.styles_sync_seconds)

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

    # --- requests ---
    def render_geometry(self) -> tuple[int, int]:
        """(side, multiple) of the rendered size, known before the model loads."""
        if self._engine is not None:
            return self._engine.info.render_side, self._engine.info.size_multiple
        return (DEMO_RENDER_SIDE, 2) if self.settings.is_demo else (1024, 16)

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
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        style: str = BASE_STYLE,
        style_strength: float | None = None,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        count: int = 1,
        format: str = "png",
        owner: str = "local",
    ) -> Job:
        """Queue a generation and return its job; raise RequestError or QueueFull at once."""
        if not prompt.strip():
            raise RequestError("prompt is empty: describe the image to make, in 1 to 2000 characters")
        try:
            chosen = (await anyio.to_thread.run_sync(self.styles.refresh)).resolve(style)
        except LookupError as exc:
            raise RequestError(str(exc)) from exc
        model_prompt, model_negative = prompt, negative_prompt
        if chosen is None:
            strength = 0.0
        else:
            strength = chosen.manifest.strength if style_strength is None else style_strength
            if not 0 <= strength <= MAX_STRENGTH:
                raise RequestError(f"style_strength must be from 0 to {MAX_STRENGTH:g}, not {strength:g}")
            model_prompt, model_negative = chosen.prompt(prompt), chosen.negative_prompt(negative_prompt)
            steps = steps or chosen.manifest.steps
            guidance = chosen.manifest.guidance if guidance is None else guidance
        default_steps, default_guidance = VARIANT_DEFAULTS[self.settings.resolved_variant]
        first_seed = random.randrange(MAX_SEED + 1) if seed is None else seed
        width, height = rendered_size(aspect_ratio, *self.render_geometry())
        spec = GenerationSpec(
            prompt=model_prompt,
            negative_prompt=model_negative,
            user_prompt=prompt,
            user_negative_prompt=negative_prompt,
            style=style,
            style_strength=strength,
            style_sha256=chosen.sha256 if chosen else None,
            aspect_ratio=aspect_ratio,
            width=width,
            height=height,
            steps=steps or default_steps,
            guidance=default_guidance if guidance is None else guidance,
            seeds=[(first_seed + i) % (MAX_SEED + 1) for i in range(count)],
            format=format,
            model=self.settings.model,
            variant=self.settings.resolved_variant,
        )
        job = Job(id=new_image_id(), spec=spec, image_ids=[new_image_id() for _ in range(count)], owner=owner)
        await self.queue.ensure_room(job)  # QueueFull goes straight back to the caller
        # Records first: once queued, a worker elsewhere may write them, and its writes must win.
        await self.save_records(job)
        await self.queue.submit(job)
        self.telemetry.job_queued(job)
        for image_id in job.image_ids:
            self._jobs[image_id] = job
        return job

    async def wait(self, job: Job, timeout: float, report: ProgressFn | None = None) -> None:
        """Wait up to `timeout` s for the job, reporting its queue position, then every denoising step.
        If the caller is cancelled, the job is cancelled with it."""
        progress = _ProgressReporter(self, job, report)
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

    async def view(self, image_id: str, viewer: str = "local") -> ImageView:
        """Where an image stands, for `viewer` (an owner id); raise InvalidImageId or ImageNotFound.
        An image the viewer may not see is reported exactly like one that does not exist."""
        check_image_id(image_id)
        job = self._jobs.get(image_id)
        record = await self.store.load_record(image_id)
        if record is None or not self._visible(str(record.get("owner", "local")), viewer):
            raise ImageNotFound(image_id)
        info = ImageInfo.model_validate(record)
        if job is not None:
            # The live job is fresher than the stored record, which is written after each change.
            index = job.image_ids.index(image_id)
            status = job.image_status(index)
            if status == "done":
                return ImageView(await self._with_url(info))
            if status in FINISHED:
                return ImageView(info.model_copy(update={"status": status, "error": job.error}))
            info = info.model_copy(update={"status": status, "progress": _image_progress(job, index)})
            return ImageView(info, self.queue.eta(job), self.queue.position(job))
        if info.status not in FINISHED and not self.queue.durable:
            # Its job lived in a process that is gone (a restart): it will never finish.
            info = info.model_copy(
                update={"status": "failed", "error": "interrupted by a server restart; generate it again"}
            )
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

    def health(self) -> dict[str, Any]:
        engine = self._engine
        status = {"idle": "loading", "loading": "loading", "ready": "ready", "error": "error"}[
            self.engine_state
        ]
        if self.is_front:
            status = "ready"  # a front serves MCP at once; the GPU workers report their own health
        body: dict[str, Any] = {
            "status": status,
            "role": "front" if self.is_front else "standalone",
            "model": self.settings.model,
            "variant": self.settings.resolved_variant,
            "device": engine.info.device if engine else None,
            "gpu_available": engine.info.device.startswith("cuda") if engine else None,
            "version": __version__,
            "queue_depth": self.queue.depth,
            "running": self.queue.running is not None,
        }
        if self.is_front:
            body["oldest_job_age_seconds"] = self.queue.oldest_age
        if self.engine_error:
            body["error"] = self.engine_error
        store_health = getattr(self.store, "health", None)
        if store_health is not None:  # Blob: reachable or not, and what waits in the spool
            body["storage"] = store_health()
        return body

    # --- the worker side ---
    async def execute(self, job: Job) -> None:
        """Run one job to the end. Never raises: a failure is recorded on the job, and the queue goes on."""
        style: Style | None = None
        try:
            engine = await self.engine()
            if job.cancel_requested:
                raise GenerationCancelled
            style = await anyio.to_thread.run_sync(self._prepare_style, engine, job)
            job.status, job.started = "running", time.monotonic()
            self.telemetry.job_started(job)
            await self.save_records(job)
            for index, image_id in enumerate(job.image_ids):
                if index >= job.images_done:  # a job taken over from a dead worker resumes
                    await self._render_one(engine, job, index, image_id, style)
            job.finish("done")
        except GenerationCancelled:
            job.finish("cancelled", "cancelled by the client")
        except StyleRefused as exc:
            if style is not None:
                self.styles.refuse(style, exc.reason)  # list_styles stops offering it until it changes
            log.warning("job %s: style refused: %s", job.id, exc)
            self.telemetry.job_failed(job, exc)
            job.finish("failed", f"style {job.spec.style!r} is refused: {exc}. The other styles still work.")
        except StyleUnavailable as exc:
            job.finish("failed", str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self.telemetry.job_failed(job, exc)
            job.finish("failed", _describe_failure(exc))
            if self._engine is not None:
                await anyio.to_thread.run_sync(self._engine.free_memory)
        await self.save_records(job)
        self.telemetry.job_finished(job)

    def _prepare_style(self, engine: Engine, job: Job) -> Style | None:
        """In a worker thread, before the job runs: pick up added, changed and removed styles, and get
        this job's adapter file. A style whose weights changed since submit runs with the new ones, and
        the record says so."""
        view = self.styles.refresh()
        engine.styles.retain(view.styles.values())  # unload the adapters of removed or changed styles
        try:
            style = view.resolve(job.spec.style)
        except LookupError as exc:
            raise StyleUnavailable(f"{exc} (it changed after this request was queued)") from exc
        if style is None:
            return None
        style = self.styles.fetch(style)
        if style.sha256 != job.spec.style_sha256:
            job.spec = job.spec.model_copy(update={"style_sha256": style.sha256})
        return style

    async def _render_one(
        self, engine: Engine, job: Job, index: int, image_id: str, style: Style | None = None
    ) -> None:
        steps_before = index * job.spec.steps

        def on_step(step: int) -> None:  # called from the engine's thread
            job.steps_done = steps_before + step

        image = await anyio.to_thread.run_sync(
            engine.generate, job.spec, index, on_step, lambda: job.cancel_requested, style
        )
        record = self._record(job, index) | {
            "status": "done",
            "progress": 1.0,
            "width": image.width,
            "height": image.height,
            "finished_at": _now(),
            "versions": _versions(),
        }
        metadata = {k: v for k, v in record.items() if k not in ("status", "progress", "error", "url", "uri")}
        data = await anyio.to_thread.run_sync(images.encode, image, job.spec.format, metadata)
        async with job.records_lock:
            await self.store.save_image(image_id, data, images.MIME_TYPES[job.spec.format], record)
            job.images_done = index + 1

    def _record(self, job: Job, index: int) -> dict[str, Any]:
        spec = job.spec
        return {
            "id": job.image_ids[index],
            "uri": f"image://{job.image_ids[index]}",
            "job_id": job.id,
            "index": index,
            "owner": job.owner,
            "status": job.image_status(index),
            "error": job.error,
            "steps_done": job.steps_done,  # job-wide: a front follows a worker's progress by it
            "progress": _image_progress(job, index),
            "seed": spec.seeds[index],
            **spec.model_dump(exclude={"seeds"}),
            "created_at": job.created_at,
        }

    async def save_records(self, job: Job) -> None:
        async with job.records_lock:
            for index, image_id in enumerate(job.image_ids):
                if index < job.images_done:
                    continue  # finished images keep their final record
                await self.store.save_record(image_id, self._record(job, index))


class _ProgressReporter:
    """Turns a job's state into MCP progress notifications, whose values must strictly increase.
    Before the first step (queued, loading) progress climbs towards 1 without reaching it; then
    every denoising step is reported, including any that ran between two polls."""

    def __init__(self, service: Noisett, job: Job, report: ProgressFn | None) -> None:
        self.service, self.job, self.report = service, job, report
        self.steps_reported = 0
        self.phases_reported = 0
        self.last_phase = ""

    async def update(self) -> None:
        job = self.job
        if self.report is None:
            return
        if job.steps_done == 0 and not job.finished:
            phase = self._phase()
            if phase != self.last_phase:
                self.phases_reported += 1
                self.last_phase = phase
                await self.report(1 - 1 / (self.phases_reported + 1), job.total_steps, phase)
            return
        while self.steps_reported < job.steps_done:
            self.steps_reported += 1
            await self.report(self.steps_reported, job.total_steps, self._step_message(self.steps_reported))

    def _phase(self) -> str:
        position = self.service.queue.position(self.job)
        if position is not None:
            return f"queued, {position} ahead" if position else "queued, next"
        return "loading the model" if self.service.engine_state == "loading" else "starting"

    def _step_message(self, steps: int) -> str:
        per_image = self.job.spec.steps
        image, step = divmod(steps - 1, per_image)
        return f"image {image + 1}/{len(self.job.image_ids)}, step {step + 1}/{per_image}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _image_progress(job: Job, index: int) -> float:
    """One image's share of its job's steps. Decoding and storing count as one more step:
    1.0 means stored."""
    if job.image_status(index) == "done":
        return 1.0
    own = min(max(job.steps_done - index * job.spec.steps, 0), job.spec.steps)
    return own / (job.spec.steps + 1)


def _azure_queue(settings: Settings, store: ImageStore) -> JobQueue:
    from noisett_mcp.engine.azure_queue import AzureJobQueue  # the Azure SDK only where it is used

    return AzureJobQueue(settings, store)


def _load_engine(settings: Settings) -> Engine:
    from noisett_mcp.engine.pipeline import Engine  # torch is imported here, in a worker thread

    return Engine(settings)


def _versions() -> dict[str, str]:
    from noisett_mcp.engine.pipeline import library_versions

    return {"noisett_mcp": __version__, **library_versions()}


def _describe_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in text.lower():
        return "the GPU ran out of memory; try fewer images, or set NOISETT_OFFLOAD or NOISETT_QUANTIZE"
    return f"generation failed ({text[:300]})"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
