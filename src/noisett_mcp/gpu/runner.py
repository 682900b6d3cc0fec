"""The job runner: loads the engine once per process and renders jobs on it, writing each image and
its records to the store. The local queue and the GPU worker both run jobs through it.

It never imports torch itself: the engine is imported on the engine thread that loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from noisett_mcp import __version__, images, sources
from noisett_mcp.config import Settings
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.errors import (
    AzureStorageNeeded,
    BatchOutOfMemory,
    GenerationCancelled,
    ImageToImageUnsupported,
    ModelLoadFailed,
    ModelUnavailable,
    SourceUnavailable,
    StyleRefused,
    StyleUnavailable,
)
from noisett_mcp.gpu.engine_thread import EngineThread
from noisett_mcp.gpu.heap import HeapTrimmer
from noisett_mcp.health import EngineHealth, EngineState
from noisett_mcp.jobs.base import Job
from noisett_mcp.jobs.records import finished_record, save_records
from noisett_mcp.schemas import default_geometry
from noisett_mcp.storage.base import ImageStore
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import Style
from noisett_mcp.telemetry import JobLabels, Telemetry
from noisett_mcp.telemetry.gpu import GpuSampler
from noisett_mcp.weights.stages import LoadStages

if TYPE_CHECKING:
    from PIL import Image

    from noisett_mcp.engine.pipeline import Engine

log = logging.getLogger(__name__)


class JobRunner:
    """Runs jobs on this process's engine, one at a time (the queue calls `execute` from one task)."""

    def __init__(
        self, settings: Settings, store: ImageStore, styles: StyleCatalog, telemetry: Telemetry
    ) -> None:
        self.settings = settings
        self.store = store
        self.styles = styles
        self.telemetry = telemetry
        self.engine_state: EngineState = "idle"
        self.engine_error: str | None = None
        self.unavailable: ModelUnavailable | None = None  # set once: every later job fails with it
        self.load_stages: LoadStages | None = None  # the running or last load's stages (/healthz)
        self._engine: Engine | None = None
        self._engine_lock = anyio.Lock()
        self._heap = HeapTrimmer()
        self._thread = EngineThread()  # the model load, renders, encodes: one thread (engine_thread)
        self._gpu: GpuSampler | None = None
        self._decoders = anyio.CapacityLimiter(sources.DECODE_THREADS)  # source decodes, never the engine's
        self._last_used = time.monotonic()
        self._jobs_running = 0
        self._idle_unloading = False

    # --- the engine ---
    def start_preload(self, task_group: TaskGroup) -> None:
        """Load the model in the background (idempotent), and unload it when idle where asked."""
        if self.settings.idle_unload_seconds and not self._idle_unloading:
            self._idle_unloading = True
            task_group.start_soon(self._unload_when_idle, self.settings.idle_unload_seconds)
        if self.settings.preload and self.engine_state == "idle":
            task_group.start_soon(self._preload)

    async def _unload_when_idle(self, idle_seconds: float) -> None:
        """Free the model (GPU memory above all) after `idle_seconds` without a job; the next job loads
        it again, with the stages as its progress (NOISETT_IDLE_UNLOAD_SECONDS)."""
        while True:
            await anyio.sleep(min(idle_seconds / 4, 5.0))
            idle = time.monotonic() - self._last_used
            if self._engine is None or self._jobs_running or idle < idle_seconds:
                continue
            async with self._engine_lock:
                engine, self._engine = self._engine, None
                if engine is None:
                    continue
                self.engine_state = "unloaded"
                await self._thread.run(_unload, engine)
            log.info("model unloaded after %.0f s without a job (NOISETT_IDLE_UNLOAD_SECONDS)", idle)

    async def _preload(self) -> None:
        with contextlib.suppress(Exception):  # recorded in engine_state; generation reports it
            await self.engine()

    async def engine(self) -> Engine:
        """The loaded engine, loading it on first use (once per process)."""
        async with self._engine_lock:
            if self._engine is None:
                self.engine_state, self.engine_error = "loading", None
                stages = self.load_stages = LoadStages(since_process_start=self.load_stages is None)
                try:
                    config = await self._engine_config(stages)
                    # Abandonable: a server whose client left exits at once, not when the load ends.
                    self._engine = await self._thread.run(
                        _load_engine, config, stages, abandon_on_cancel=True
                    )
                except ModelUnavailable as exc:  # a user's error: one line, no traceback
                    self.engine_state, self.engine_error, self.unavailable = "error", str(exc), exc
                    log.error("%s", exc)
                    raise
                except ModelLoadFailed as exc:  # this load only: the next request tries again
                    self.engine_state, self.engine_error = "error", f"{type(exc).__name__}: {exc}"
                    log.error("model load failed: %s", exc)
                    self.telemetry.error("load", exc)
                    raise
                except Exception as exc:
                    self.engine_state, self.engine_error = "error", f"{type(exc).__name__}: {exc}"
                    log.exception("model %s failed to load", self.settings.model)
                    self.telemetry.error("load", exc)
                    raise
                self.engine_state = "ready"
                stages.finish()
                log.info("model %s ready on %s", self.settings.model, self._engine.info.device)
                if stages.since_process_start:  # the cold start; a reload after an idle unload is not one
                    self.telemetry.cold_start_ready(stages.durations())
                await self._watch_gpu(self._engine.info.device)
            return self._engine

    async def _watch_gpu(self, device: str) -> None:
        """Sample the GPU for telemetry once the model runs on one (NVML starts off the event loop)."""
        if device.startswith("cuda") and self._gpu is None:
            self._gpu = await anyio.to_thread.run_sync(GpuSampler.start, self.settings.gpu_sample_seconds)
            self.telemetry.watch_gpu(self._gpu)

    @property
    def device(self) -> str | None:
        return self._engine.info.device if self._engine else None

    def render_geometry(self) -> tuple[int, int]:
        """(side, multiple) of the rendered size, known before the model loads."""
        if self._engine is not None:
            return self._engine.info.render_side, self._engine.info.size_multiple
        return default_geometry(self.settings)

    def health(self) -> EngineHealth:
        """The engine's part of /health: `loading` until the model is ready, `error` if it failed."""
        load = self.load_stages.snapshot() if self.load_stages is not None else None
        return EngineHealth.of(self.engine_state, self.device, self.engine_error, load)

    def loading_text(self) -> str:
        """generate_image's progress while the model loads: `loading the model: 31 of 58 GiB`."""
        if self.engine_state == "loading" and self.load_stages is not None:
            return self.load_stages.progress_text()
        return "loading the model"

    async def _engine_config(self, stages: LoadStages) -> EngineConfig:
        """What the engine loads with: a `blob://CONTAINER/PREFIX` model to be quantized as it loads is
        first synced to the model cache (unchanged files skipped by size and ETag) and loaded from there;
        otherwise the engine streams it from Blob (engine/streaming.py)."""
        config = EngineConfig.from_settings(self.settings)
        if not self.settings.blob_model or self.settings.quantize == "none":
            return config
        from noisett_mcp.storage.sync import sync_model

        account = self.store.account
        if account is None:
            raise AzureStorageNeeded(f"NOISETT_MODEL={self.settings.model}")
        stages.begin("sync")
        folder = await sync_model(account, self.settings)
        weights = dataclasses.replace(config.weights, model=str(folder), blob_model=False)
        return dataclasses.replace(config, model=str(folder), weights=weights)

    # --- jobs ---
    async def execute(self, job: Job) -> None:
        """Run one job to the end. Never raises: a failure is recorded on the job, and the queue goes on."""
        style: Style | None = None
        self._jobs_running += 1
        try:
            job.waited_for_model = self._engine is None
            engine = await self.engine()
            if job.cancel_requested:
                raise GenerationCancelled
            style = await self._thread.run(self._prepare_style, engine, job)
            source = await self._source(job)
            job.status, job.started = "running", time.monotonic()
            self.telemetry.job_started(
                job,
                _labels(job),
                job_id=job.id,
                images=len(job.image_ids),
                steps=job.spec.steps,
                waited=job.started - job.created,
            )
            await save_records(self.store, job)
            await self._render(engine, job, style, source)
            job.finish("done")
        except GenerationCancelled:
            job.finish("cancelled", "cancelled by the client")
        except StyleRefused as exc:
            if style is not None:
                self.styles.refuse(style, exc.reason)  # list_styles stops offering it until it changes
            log.warning("job %s: style refused: %s", job.id, exc)
            self.telemetry.job_failed(job, _labels(job), exc)
            job.finish("failed", f"style {job.spec.style!r} is refused: {exc}. The other styles still work.")
        except (
            StyleUnavailable,
            SourceUnavailable,
            ImageToImageUnsupported,
            ModelUnavailable,
        ) as exc:
            job.finish("failed", str(exc))
        except ModelLoadFailed as exc:  # counted as the job's failure too; the next job loads again
            self.telemetry.job_failed(job, _labels(job), exc)
            job.finish("failed", str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self.telemetry.job_failed(job, _labels(job), exc)
            job.finish("failed", describe_failure(exc))
            if self._engine is not None:
                await self._thread.run(self._engine.free_memory)
        finally:
            self._jobs_running -= 1
            self._last_used = time.monotonic()
        try:
            await save_records(self.store, job)
        finally:
            job.settle()
        seconds = None  # from its start to its last image, for a job that is done
        if job.status == "done" and job.started is not None and job.finished_at is not None:
            seconds = job.finished_at - job.started
        self.telemetry.job_finished(
            job, _labels(job), status=job.status, images_done=job.images_done, seconds=seconds
        )

    async def release_memory(self) -> None:
        """Give the heap pages freed by the last jobs back to the OS (`heap`). Call it between jobs,
        when no other job is waiting: it takes milliseconds, and at most once a second."""
        await self._thread.run(self._heap.trim)

    def close(self) -> None:
        """Let the engine thread end once its calls are done (the engine itself stays loaded)."""
        self._thread.close()
        if self._gpu is not None:
            self._gpu.close()

    def _prepare_style(self, engine: Engine, job: Job) -> Style | None:
        """On the engine thread, before the job runs: pick up added, changed and removed styles, and get
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

    async def _source(self, job: Job) -> Image.Image | None:
        """An image-to-image job's source, fitted to the rendered size: as the front fitted it where it
        was submitted here, else decoded from the store (a GPU worker: by the source image's id, or by
        sha256) in a worker thread, within the process's decode budget."""
        spec = job.spec
        if spec.source_sha256 is None:
            return None
        if job.fitted_source is not None:  # checked and fitted in one decode when it was submitted here
            return job.fitted_source
        data = job.source
        if data is None and spec.source_image_id is not None:
            stored = await self.store.load_image(spec.source_image_id)
            data = stored.data if stored else None
        elif data is None:
            data = await self.store.load_source(spec.source_sha256)
        if data is None or hashlib.sha256(data).hexdigest() != spec.source_sha256:
            raise SourceUnavailable("its source image is no longer stored (it expired); send it again")
        # A worker thread, never the engine's: a decode must not hold other callers' jobs.
        return await anyio.to_thread.run_sync(
            sources.fit, data, spec.width, spec.height, limiter=self._decoders
        )

    async def _render(
        self, engine: Engine, job: Job, style: Style | None, source: Image.Image | None
    ) -> None:
        missing = list(range(job.images_done, len(job.image_ids)))  # a resumed job skips what is stored
        if len(missing) > 1 and engine.batching:
            try:
                await self._render_batch(engine, job, missing, style, source)
                return
            except BatchOutOfMemory:
                # Back to the batch's start; steps already reported stay so (progress never goes back).
                job.steps_done = missing[0] * job.spec.denoise_steps
                log.warning("job %s: rendering its %d images one at a time", job.id, len(missing))
        for index in missing:
            await self._render_batch(engine, job, [index], style, source)

    async def _render_batch(
        self, engine: Engine, job: Job, indices: list[int], style: Style | None, source: Image.Image | None
    ) -> None:
        """Images `indices` (consecutive) in one pipeline call, then stored in order."""
        steps_before = indices[0] * job.spec.denoise_steps

        def on_step(step: int) -> None:  # called from the engine's thread
            job.steps_done = steps_before + step * len(indices)

        # Set until the batch is stored, so that progress read meanwhile still counts batch steps.
        job.batch = range(indices[0], indices[-1] + 1) if len(indices) > 1 else range(0)
        try:
            began = time.monotonic()
            rendered = await self._thread.run(
                engine.generate_batch, job.spec, indices, on_step, lambda: job.cancel_requested, style, source
            )
            self.telemetry.images_rendered(time.monotonic() - began, len(rendered), _labels(job))
            for index, image in zip(indices, rendered, strict=True):
                record = finished_record(
                    job, index, image.width, image.height, _versions(), batched=len(indices) > 1
                )
                fmt = images.FORMATS[job.spec.format]
                data = await self._thread.run(images.encode, image, fmt.name, record.parameters())
                async with job.records_lock:
                    await self.store.save_image(data, fmt.mime_type, record)
                    job.images_done = index + 1
        finally:
            job.batch = range(0)


# One model load at a time in a process. from_pretrained builds modules under a global patch of
# torch.nn (accelerate's init_empty_weights); two loads at once can restore each other's patch and leave
# every later module on the meta device. Each runner loads on its own engine thread, and a process may
# hold several runners (tests do); an abandoned load (a client gone) thus finishes before the next.
_LOADING = threading.Lock()


def _load_engine(config: EngineConfig, stages: LoadStages) -> Engine:
    # From process start (or the reload) to the engine imported; after a sync, from the sync's end.
    stages.begin("imports", started=None if stages.stages else 0.0)
    from noisett_mcp.engine.pipeline import Engine  # torch is imported here, on the engine thread

    stages.begin("settings")
    with _LOADING:
        return Engine(config, stages=stages)


def _unload(engine: Engine) -> None:
    """Drop the pipeline and give its memory back (on the engine thread, after the calls before it)."""
    del engine.pipe, engine.styles  # the adapters hold the pipeline too
    engine.free_memory()


def _versions() -> dict[str, str]:
    from noisett_mcp.engine.pipeline import library_versions

    return {"noisett_mcp": __version__, **library_versions()}


def _labels(job: Job) -> JobLabels:
    return JobLabels(model=job.spec.model, variant=job.spec.variant, style=job.spec.style)


def describe_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in text.lower():
        return "the GPU ran out of memory; try fewer images, or set NOISETT_OFFLOAD or NOISETT_QUANTIZE"
    return f"generation failed ({text[:300]})"
