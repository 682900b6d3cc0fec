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
from noisett_mcp.engine.jobs import GenerationCancelled, Job, LocalJobQueue, QueueFull
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

if TYPE_CHECKING:
    from noisett_mcp.engine.pipeline import Engine

log = logging.getLogger(__name__)

EngineState = Literal["idle", "loading", "ready", "error"]
ProgressFn = Callable[[float, float, str], Awaitable[None]]

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
    def __init__(self, settings: Settings, store: ImageStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.queue = LocalJobQueue(self._execute, settings.max_queue)
        self._jobs: dict[str, Job] = {}  # by image id, while this process knows the job
        self._engine: Engine | None = None
        self.engine_state: EngineState = "idle"
        self.engine_error: str | None = None
        self._engine_lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    # --- lifecycle ---
    async def __aenter__(self) -> Noisett:
        self._tg = await anyio.create_task_group().__aenter__()
        self._tg.start_soon(self.queue.run)
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
        if self.settings.preload and self.engine_state == "idle" and self._tg is not None:
            self._tg.start_soon(self._preload)

    async def _preload(self) -> None:
        with contextlib.suppress(Exception):  # recorded in engine_state; generation reports it
            await self.engine()

    async def engine(self) -> Engine:
        """The loaded engine, loading it on first use (once per process)."""
        async with self._engine_lock:
            if self._engine is None:
                self.engine_state, self.engine_error = "loading", None
                try:
                    self._engine = await anyio.to_thread.run_sync(_load_engine, self.settings)
                except Exception as exc:
                    self.engine_state, self.engine_error = "error", f"{type(exc).__name__}: {exc}"
                    log.exception("model %s failed to load", self.settings.model)
                    raise
                self.engine_state = "ready"
            return self._engine

    # --- requests ---
    def render_geometry(self) -> tuple[int, int]:
        """(side, multiple) of the rendered size, known before the model loads."""
        if self._engine is not None:
            return self._engine.info.render_side, self._engine.info.size_multiple
        return (DEMO_RENDER_SIDE, 2) if self.settings.is_demo else (1024, 16)

    def list_styles(self) -> list[StyleInfo]:
        steps, guidance = VARIANT_DEFAULTS[self.settings.resolved_variant]
        return [
            StyleInfo(
                name="none",
                title="No style",
                description="The base model with no brand style applied: use it for neutral images.",
                strength=0.0,
                aspect_ratio="1:1",
                steps=steps,
                guidance=guidance,
            )
        ]

    async def submit(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        style: str = "none",
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
        names = [s.name for s in self.list_styles()]
        if style not in names:
            raise RequestError(f"unknown style {style!r}; available styles: {', '.join(names)}")
        default_steps, default_guidance = VARIANT_DEFAULTS[self.settings.resolved_variant]
        first_seed = random.randrange(MAX_SEED + 1) if seed is None else seed
        width, height = rendered_size(aspect_ratio, *self.render_geometry())
        spec = GenerationSpec(
            prompt=prompt,
            negative_prompt=negative_prompt,
            style=style,
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
        self.queue.submit(job)  # QueueFull goes straight back to the caller
        for image_id in job.image_ids:
            self._jobs[image_id] = job
        await self._save_records(job)
        return job

    async def wait(self, job: Job, timeout: float, report: ProgressFn | None = None) -> None:
        """Wait up to `timeout` s for the job, reporting its queue position, then every denoising step.
        If the caller is cancelled, the job is cancelled with it."""
        progress = _ProgressReporter(self, job, report)
        try:
            with anyio.move_on_after(timeout):
                while not job.finished:
                    await progress.update()
                    with anyio.move_on_after(0.05):
                        await job.done.wait()
            await progress.update()
        except anyio.get_cancelled_exc_class():
            self.queue.cancel(job)  # the client gave up on this request: stop its work
            raise

    async def view(self, image_id: str) -> ImageView:
        """Where an image stands; raise InvalidImageId or ImageNotFound."""
        check_image_id(image_id)
        job = self._jobs.get(image_id)
        record = await self.store.load_record(image_id)
        if record is None:
            raise ImageNotFound(image_id)
        info = ImageInfo.model_validate(record)
        if job is not None and not job.finished and info.status not in FINISHED:
            index = job.image_ids.index(image_id)
            steps_before = index * job.spec.steps
            own = min(max(job.steps_done - steps_before, 0), job.spec.steps)
            info = info.model_copy(
                update={"status": job.image_status(index), "progress": own / job.spec.steps}
            )
            return ImageView(info, self.queue.eta(job), self.queue.position(job))
        if job is None and info.status not in FINISHED:
            # Its job lived in a process that is gone (a restart): it will never finish.
            info = info.model_copy(
                update={"status": "failed", "error": "interrupted by a server restart; generate it again"}
            )
        return ImageView(info)

    async def load_image(self, image_id: str) -> StoredImage:
        stored = await self.store.load_image(check_image_id(image_id))
        if stored is None:
            raise ImageNotFound(image_id)
        return stored

    def health(self) -> dict[str, Any]:
        engine = self._engine
        status = {"idle": "loading", "loading": "loading", "ready": "ready", "error": "error"}[
            self.engine_state
        ]
        body: dict[str, Any] = {
            "status": status,
            "model": self.settings.model,
            "variant": self.settings.resolved_variant,
            "device": engine.info.device if engine else None,
            "gpu_available": engine.info.device.startswith("cuda") if engine else None,
            "version": __version__,
            "queue_depth": self.queue.depth,
            "running": self.queue.running is not None,
        }
        if self.engine_error:
            body["error"] = self.engine_error
        return body

    # --- the worker side ---
    async def _execute(self, job: Job) -> None:
        """Run one job to the end. Never raises: a failure is recorded on the job, and the queue goes on."""
        try:
            engine = await self.engine()
            if job.cancel_requested:
                raise GenerationCancelled
            job.status, job.started = "running", time.monotonic()
            await self._save_records(job)
            for index, image_id in enumerate(job.image_ids):
                await self._render_one(engine, job, index, image_id)
            job.finish("done")
        except GenerationCancelled:
            job.finish("cancelled", "cancelled by the client")
        except Exception as exc:
            log.exception("job %s failed", job.id)
            job.finish("failed", _describe_failure(exc))
            if self._engine is not None:
                await anyio.to_thread.run_sync(self._engine.free_memory)
        await self._save_records(job)

    async def _render_one(self, engine: Engine, job: Job, index: int, image_id: str) -> None:
        steps_before = index * job.spec.steps

        def on_step(step: int) -> None:  # called from the engine's thread
            job.steps_done = steps_before + step

        image = await anyio.to_thread.run_sync(
            engine.generate, job.spec, index, on_step, lambda: job.cancel_requested
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
        await self.store.save_image(image_id, data, images.MIME_TYPES[job.spec.format], record)
        record["url"] = await self.store.image_url(image_id)
        await self.store.save_record(image_id, record)
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
            "seed": spec.seeds[index],
            **spec.model_dump(exclude={"seeds"}),
            "created_at": job.created_at,
        }

    async def _save_records(self, job: Job) -> None:
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
