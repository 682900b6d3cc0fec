"""Telemetry cost: stdio start-up → `tools/list` with Azure Monitor switched on (a connection string to a
loopback stand-in for the ingestion endpoint) against off, side by side; and the per-job cost of the
telemetry hooks with the real OpenTelemetry SDK against the API's no-ops.
Goals: telemetry on adds at most 1.5 s to start-up; the hooks cost under 1 ms per job."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import anyio
from mcp import Client, StdioServerParameters
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.common import demo_settings, median, report, scaled, serve_asgi
from noisett_mcp.jobs.base import Job
from noisett_mcp.schemas import GenerationSpec
from noisett_mcp.telemetry import JobLabels, Telemetry
from tests.test_telemetry import _ingestion_app

RUNS = scaled(5, 1)
JOBS = scaled(2000, 50)


async def time_tools_list(extra_env: dict[str, str]) -> float:
    settings = demo_settings()
    env = {**os.environ, "NOISETT_MODEL": "demo", "NOISETT_DATA_DIR": str(settings.data_dir), **extra_env}
    params = StdioServerParameters(command=sys.executable, args=["-m", "noisett_mcp", "serve"], env=env)
    started = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        return time.perf_counter() - started


def time_hooks(telemetry: Telemetry) -> float:
    """Seconds per job for the whole hook sequence of one successful generation."""
    spec = GenerationSpec(
        prompt="p", width=64, height=64, steps=2, guidance=0.0, seeds=[1], model="demo", variant="fast"
    )
    labels = JobLabels(model=spec.model, variant=spec.variant, style=spec.style)
    started = time.perf_counter()
    for index in range(JOBS):
        job = Job(id=f"j{index}", spec=spec, image_ids=["i"])
        telemetry.job_queued(job)
        job.status, job.started = "running", time.monotonic()
        telemetry.job_started(job, labels, job_id=job.id, images=1, steps=spec.steps, waited=0.0)
        job.images_done = 1
        job.finish("done")
        telemetry.job_finished(job, labels, status=job.status, images_done=job.images_done, seconds=0.0)
    return (time.perf_counter() - started) / JOBS


async def main() -> None:
    received: list[dict] = []
    async with serve_asgi(_ingestion_app(received)) as ingestion:
        on_env = {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion}/;"
                f"LiveEndpoint={ingestion}/"
            ),
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
            "TMPDIR": tempfile.mkdtemp(prefix="noisett-bench-otel-"),
        }
        off, on = [], []
        for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
            off.append(await time_tools_list({}))
            on.append(await time_tools_list(on_env))
    noop = time_hooks(Telemetry())  # no SDK installed in this process: the API's no-ops
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk = time_hooks(Telemetry(MeterProvider(metric_readers=[InMemoryMetricReader()]), tracer_provider))
    assert len(exporter.get_finished_spans()) == JOBS  # the hooks really recorded
    o, n = median(off), median(on)
    ok = n - o <= 1.5 and sdk < 1e-3
    report(
        "telemetry cost",
        [
            ("start-up → tools/list, telemetry off", f"{o:.2f} s median of {RUNS}"),
            ("start-up → tools/list, Azure Monitor on", f"{n:.2f} s median of {RUNS}"),
            ("added by Azure Monitor", f"{n - o:+.2f} s ({n / o:.2f}x)"),
            ("hooks per job, API no-ops", f"{noop * 1e6:.1f} µs"),
            ("hooks per job, OpenTelemetry SDK", f"{sdk * 1e6:.1f} µs ({sdk / noop:.1f}x the no-ops)"),
        ],
        f"{'MET' if ok else 'MISSED'} (goal: ≤ 1.5 s added to start-up, < 1 ms of hooks per job)",
    )


if __name__ == "__main__":
    anyio.run(main)
