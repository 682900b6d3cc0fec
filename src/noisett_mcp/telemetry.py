"""Telemetry: OpenTelemetry traces and metrics for generations, structured logs, and the optional Azure
Monitor exporter.

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
NVML (`gpu_metrics`) once it is ready on a GPU. `metric_names` lists them all. Prompts are never recorded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

from noisett_mcp import __version__
from noisett_mcp import metric_names as names
from noisett_mcp.cold_start import seconds_since_process_start
from noisett_mcp.gpu_metrics import GpuSample, GpuSampler, register_gpu_gauges

if TYPE_CHECKING:
    from noisett_mcp.config import Settings
    from noisett_mcp.jobs.base import Job, JobQueue

SCOPE = "noisett_mcp"
SERVICE_NAME = "noisett-mcp"

log = logging.getLogger(__name__)

# Seconds. Generations run from about a second (demo model) to many minutes (a T4 with offload).
_DURATION_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 2400]
_WAIT_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200]


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a failure: the exception's class, or `out_of_memory` for any GPU OOM."""
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return type(exc).__qualname__


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
        self._queues: weakref.WeakSet[JobQueue] = weakref.WeakSet()
        meter.create_observable_gauge(
            names.QUEUE_DEPTH.name,
            callbacks=[self._observe_depth],
            unit=names.QUEUE_DEPTH.unit,
            description=names.QUEUE_DEPTH.description,
        )
        # Per job, while it lives: where it was queued from, then its span and the context made current.
        self._queued: weakref.WeakKeyDictionary[Job, tuple[otel_context.Context, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._running: weakref.WeakKeyDictionary[Job, tuple[trace.Span, object]] = weakref.WeakKeyDictionary()

    @classmethod
    def default(cls) -> Telemetry:
        """The process-wide instruments on the global providers (no-ops until an SDK is set up)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # --- hooks called by the service, one line each ---
    def observe_queue(self, queue: JobQueue) -> None:
        self._queues.add(queue)

    def job_queued(self, job: Job) -> None:
        """Remember the request's trace context, so the job's span joins the MCP call that asked for it."""
        self._queued[job] = (otel_context.get_current(), time.time_ns())

    def job_started(self, job: Job) -> None:
        attributes = _job_attributes(job)
        parent, queued_ns = self._queued.pop(job, (None, time.time_ns()))
        span = self._tracer.start_span(
            "noisett.generate",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                **attributes,
                "noisett.job.id": job.id,
                "noisett.images.requested": len(job.image_ids),
                "noisett.steps": job.spec.steps,
            },
            start_time=queued_ns,
        )
        wait = (job.started or time.monotonic()) - job.created
        span.add_event("started", {"noisett.queue.wait_time": wait})
        self._wait.record(wait, attributes)
        # Current for the rest of the job, so its logs and the storage SDK's spans land in its trace.
        self._running[job] = (span, otel_context.attach(trace.set_span_in_context(span)))

    def job_failed(self, job: Job, exc: BaseException) -> None:
        kind = error_kind(exc)
        self._errors.add(1, {**_job_attributes(job), names.ERROR_TYPE: kind, names.OPERATION: "generate"})
        running = self._running.get(job)
        if running is not None:
            span = running[0]
            span.record_exception(exc)
            span.set_attribute("error.type", kind)
            span.set_status(StatusCode.ERROR, kind)

    def job_finished(self, job: Job) -> None:
        attributes = _job_attributes(job)
        if job.images_done:
            self._images.add(job.images_done, attributes)
        self._requests.add(1, {**attributes, names.STATUS: job.status})
        if job.status == "done" and job.started is not None and job.finished_at is not None:
            self._duration.record(job.finished_at - job.started, attributes)
        running = self._running.pop(job, None)
        if running is None:
            return  # cancelled or failed before it started: it never had a span
        span, token = running
        span.set_attributes({"noisett.status": job.status, "noisett.images.done": job.images_done})
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def error(self, operation: str, exc: BaseException) -> None:
        """A failure outside a job, e.g. operation `load` for the model."""
        self._errors.add(1, {names.ERROR_TYPE: error_kind(exc), names.OPERATION: operation})

    def images_rendered(self, seconds: float, count: int, *, model: str, variant: str, style: str) -> None:
        """One pipeline call rendered `count` images in `seconds`: each image's share, once per image."""
        attributes = {names.MODEL: model, names.VARIANT: variant, names.STYLE: style}
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


def _job_attributes(job: Job) -> dict[str, str | int]:
    spec = job.spec
    return {names.MODEL: spec.model, names.VARIANT: spec.variant, names.STYLE: spec.style}


def _histogram(meter: metrics.Meter, metric: names.Metric, buckets: list[float]) -> metrics.Histogram:
    return meter.create_histogram(
        metric.name,
        unit=metric.unit,
        description=metric.description,
        explicit_bucket_boundaries_advisory=buckets,
    )


def _counter(meter: metrics.Meter, metric: names.Metric) -> metrics.Counter:
    return meter.create_counter(metric.name, unit=metric.unit, description=metric.description)


# --- Azure Monitor (optional) ---
def setup(settings: Settings) -> bool:
    """Send traces, metrics and the `noisett_mcp` logs to Application Insights when
    APPLICATIONINSIGHTS_CONNECTION_STRING is set. Without it this does nothing, and costs nothing: the
    exporter (the `azure-monitor` extra) is imported only here."""
    secret = settings.applicationinsights_connection_string
    if secret is None or not secret.get_secret_value().strip():
        return False
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        log.warning(
            "APPLICATIONINSIGHTS_CONNECTION_STRING is set but the Azure Monitor exporter is not installed "
            "(pip install 'noisett-mcp[azure-monitor]'): telemetry stays off"
        )
        return False
    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    for chatty in ("azure.monitor.opentelemetry", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    configure_azure_monitor(
        connection_string=secret.get_secret_value(),
        # Only our own logs go to Application Insights; everything still reaches the console (Log Analytics).
        logger_name=SCOPE,
        resource=Resource.create(attributes),
    )
    # Container Apps stops a replica with SIGTERM, and uvicorn re-raises it after its graceful shutdown:
    # with the default action the process would die before the exporters' atexit flush. Exit normally.
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_normally)
    log.info("telemetry: sending traces, metrics and logs to Azure Monitor")
    return True


def _exit_normally(signum: int, frame: object) -> None:
    sys.exit(0)


# --- structured logs, with secrets kept out ---
_REDACTED = "[REDACTED]"
_SECRETS = [
    # Authorization headers and bare JWTs (Entra access tokens).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + _REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), _REDACTED),
    # Connection strings: AccountKey=...; SharedAccessSignature=...; InstrumentationKey=...
    (
        re.compile(
            r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|InstrumentationKey|ClientSecret|Password)"
            r"=[^;\s\"']+"
        ),
        r"\1=" + _REDACTED,
    ),
    # SAS URLs: the signature is the secret part.
    (re.compile(r"(?i)([?&]sig=)[^&\s\"']+"), r"\1" + _REDACTED),
    # key=value and "key": "value" pairs whose names say they are secrets.
    (
        re.compile(
            r"(?i)\b((?:access|refresh|id)_token|client_secret|api[_-]?key|password|hf_token|secret)"
            r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1\2" + _REDACTED,
    ),
    # Hugging Face user access tokens.
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), _REDACTED),
]


def redact(text: str) -> str:
    """`text` with tokens, keys and signatures replaced by [REDACTED]."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _install_redaction() -> None:
    """Redact every log record as it is made, so that no handler (console, Azure Monitor, a library's own)
    ever sees a secret. Records without secrets are left exactly as they were."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_noisett_redacts", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            trace_text = logging.Formatter().formatException(record.exc_info)
            clean_trace = redact(trace_text)
            if clean_trace != trace_text:
                # The exception object itself carries the secret: keep only the cleaned text.
                record.exc_info, record.exc_text = None, clean_trace
        return record

    make_record._noisett_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


# Standard LogRecord attributes, and uvicorn's ANSI-coloured copy of its message: not `extra=` fields.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what Log Analytics (ContainerAppConsoleLogs) and `jq` parse."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        for key, value in vars(record).items():  # `extra=` fields
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", stream: IO[str] | None = None
) -> None:
    """Log to stderr (stdout belongs to MCP on stdio) as text or JSON lines, with secrets redacted."""
    _install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
