"""OpenTelemetry traces and metrics for generations.

Only the OpenTelemetry API is used here (it comes with `mcp`, which traces every MCP request itself). Until
an SDK is configured every call is a cheap no-op. An SDK is configured by `setup` when
APPLICATIONINSIGHTS_CONNECTION_STRING is set (the `azure-monitor` extra), by `opentelemetry-instrument`, or by
a test that installs its own providers.

What is recorded, per generation job:
- a span `noisett.generate`, child of the MCP `tools/call generate_image` span that queued it, from the
  moment it was queued to the moment it finished;
- `noisett.queue.wait_time` (s) when it starts, `noisett.generation.image.duration` (s) per image,
  `noisett.generation.duration` (s), `noisett.images.generated` and `noisett.generation.requests` when it
  finishes, `noisett.errors` by `error.type` when it fails;
- `noisett.queue.depth`, the jobs waiting for the GPU, read whenever metrics are collected.
Per process: `noisett.cold_start.duration` and its stages once the model is ready, and the GPU gauges from
NVML (`telemetry/gpu.py`) once it is ready on a GPU. `telemetry/names.py` lists them all. Prompts are never
recorded.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

from noisett_mcp import __version__
from noisett_mcp.telemetry import names
from noisett_mcp.telemetry.cold_start import seconds_since_process_start
from noisett_mcp.telemetry.gpu import GpuSample, GpuSampler, register_gpu_gauges

SCOPE = "noisett_mcp"

# Seconds. Generations run from about a second (demo model) to many minutes (a T4 with offload).
_DURATION_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 2400]
_WAIT_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200]


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a failure: the exception's class, or `out_of_memory` for any GPU OOM."""
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return type(exc).__qualname__


@dataclass(frozen=True)
class JobLabels:
    """The bounded labels every job instrument carries (never the prompt)."""

    model: str
    variant: str
    style: str

    def attributes(self) -> dict[str, str | int]:
        return {names.MODEL: self.model, names.VARIANT: self.variant, names.STYLE: self.style}


class Depth(Protocol):
    """A queue as the depth gauge sees it."""

    @property
    def depth(self) -> int: ...


class Telemetry:
    """The service's instruments. One per meter provider: the default one uses the global providers."""

    _default: ClassVar[Telemetry | None] = None

    def __init__(
        self, meter_provider: MeterProvider | None = None, tracer_provider: TracerProvider | None = None
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._duration = _histogram(meter, names.GENERATION_DURATION, _DURATION_BUCKETS)
        self._image_duration = _histogram(meter, names.IMAGE_DURATION, _DURATION_BUCKETS)
        self._wait = _histogram(meter, names.QUEUE_WAIT, _WAIT_BUCKETS)
        self._cold_start = _histogram(meter, names.COLD_START, _DURATION_BUCKETS)
        self._cold_start_stage = _histogram(meter, names.COLD_START_STAGE, _DURATION_BUCKETS)
        self._images = _counter(meter, names.IMAGES_GENERATED)
        self._requests = _counter(meter, names.REQUESTS)
        self._errors = _counter(meter, names.ERRORS)
        self._gpu: GpuSampler | None = None
        register_gpu_gauges(meter, self._gpu_samples)
        # Observable instruments are registered once per meter: the gauge sums every queue it watches.
        self._queues: weakref.WeakSet[Depth] = weakref.WeakSet()
        meter.create_observable_gauge(
            names.QUEUE_DEPTH.name,
            callbacks=[self._observe_depth],
            unit=names.QUEUE_DEPTH.unit,
            description=names.QUEUE_DEPTH.description,
        )
        # Per job, while it lives: where it was queued from, then its span and the context made current.
        # Keyed weakly by the caller's job object (any object that can be weakly referenced), so a job
        # that never starts here (cancelled in line, or rendered by a worker elsewhere) leaves nothing.
        self._queued: weakref.WeakKeyDictionary[object, tuple[otel_context.Context, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._running: weakref.WeakKeyDictionary[object, tuple[trace.Span, object]] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def default(cls) -> Telemetry:
        """The process-wide instruments on the global providers (no-ops until an SDK is set up)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # --- hooks called by the service, one line each ---
    def observe_queue(self, queue: Depth) -> None:
        self._queues.add(queue)

    def job_queued(self, job: object) -> None:
        """Remember the request's trace context, so the job's span joins the MCP call that asked for it.
        `job` is only a key: the same object is handed to the later hooks."""
        self._queued[job] = (otel_context.get_current(), time.time_ns())

    def job_started(
        self, job: object, labels: JobLabels, *, job_id: str, images: int, steps: int, waited: float
    ) -> None:
        """The job left the line after `waited` seconds (the model load included)."""
        attributes = labels.attributes()
        parent, queued_ns = self._queued.pop(job, (None, time.time_ns()))
        span = self._tracer.start_span(
            "noisett.generate",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                **attributes,
                "noisett.job.id": job_id,
                "noisett.images.requested": images,
                "noisett.steps": steps,
            },
            start_time=queued_ns,
        )
        span.add_event("started", {"noisett.queue.wait_time": waited})
        self._wait.record(waited, attributes)
        # Current for the rest of the job, so its logs and the storage SDK's spans land in its trace.
        self._running[job] = (span, otel_context.attach(trace.set_span_in_context(span)))

    def job_failed(self, job: object, labels: JobLabels, exc: BaseException) -> None:
        kind = error_kind(exc)
        self._errors.add(1, {**labels.attributes(), names.ERROR_TYPE: kind, names.OPERATION: "generate"})
        running = self._running.get(job)
        if running is not None:
            span = running[0]
            span.record_exception(exc)
            span.set_attribute("error.type", kind)
            span.set_status(StatusCode.ERROR, kind)

    def job_finished(
        self, job: object, labels: JobLabels, *, status: str, images_done: int, seconds: float | None
    ) -> None:
        """The job ended with `status`; `seconds` from its start to its last image, when it is done."""
        attributes = labels.attributes()
        if images_done:
            self._images.add(images_done, attributes)
        self._requests.add(1, {**attributes, names.STATUS: status})
        if seconds is not None:
            self._duration.record(seconds, attributes)
        running = self._running.pop(job, None)
        if running is None:
            return  # cancelled or failed before it started: it never had a span
        span, token = running
        span.set_attributes({"noisett.status": status, "noisett.images.done": images_done})
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def error(self, operation: str, exc: BaseException) -> None:
        """A failure outside a job, e.g. operation `load` for the model."""
        self._errors.add(1, {names.ERROR_TYPE: error_kind(exc), names.OPERATION: operation})

    def images_rendered(self, seconds: float, count: int, labels: JobLabels) -> None:
        """One pipeline call rendered `count` images in `seconds`: each image's share, once per image."""
        attributes = labels.attributes()
        for _ in range(count):
            self._image_duration.record(seconds / count, attributes)

    def record_cold_start(self, total_seconds: float, stages: Sequence[tuple[str, float]]) -> None:
        """The model is ready `total_seconds` after the process started, through `stages` (name, seconds),
        in order. Also a span `noisett.cold_start` from the process's start, an event at each stage's end."""
        self._cold_start.record(total_seconds)
        now_ns = time.time_ns()
        at_ns = now_ns - int(total_seconds * 1e9)
        # A root span: the start came before whichever request happened to wait for the load.
        span = self._tracer.start_span(
            "noisett.cold_start", context=otel_context.Context(), kind=SpanKind.INTERNAL, start_time=at_ns
        )
        for stage, seconds in stages:
            self._cold_start_stage.record(seconds, {names.STAGE: stage})
            at_ns += int(seconds * 1e9)
            span.add_event(stage, {"noisett.cold_start.seconds": seconds}, timestamp=min(at_ns, now_ns))
        span.end(end_time=now_ns)

    def cold_start_ready(self, stages: Sequence[tuple[str, float]]) -> None:
        """`record_cold_start` with the process's age as the total (the stages are whatever the caller
        timed; the time before the first of them is reported as stage `startup`)."""
        total = seconds_since_process_start()
        startup = max(0.0, total - sum(seconds for _, seconds in stages))
        self.record_cold_start(total, [("startup", startup), *stages])

    def watch_gpu(self, sampler: GpuSampler | None) -> None:
        """Report `sampler`'s GPUs from now on (None: no GPU, and the GPU gauges stay absent)."""
        self._gpu = sampler

    def _gpu_samples(self) -> tuple[GpuSample, ...]:
        return self._gpu.samples if self._gpu is not None else ()

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(queue.depth for queue in list(self._queues)))


def _histogram(meter: metrics.Meter, metric: names.Metric, buckets: list[float]) -> metrics.Histogram:
    return meter.create_histogram(
        metric.name,
        unit=metric.unit,
        description=metric.description,
        explicit_bucket_boundaries_advisory=buckets,
    )


def _counter(meter: metrics.Meter, metric: names.Metric) -> metrics.Counter:
    return meter.create_counter(metric.name, unit=metric.unit, description=metric.description)
