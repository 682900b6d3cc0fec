"""Telemetry with the real OpenTelemetry SDK: in-memory span exporter and metric reader around real
generations on the demo model; JSON logs with secrets redacted; and the Azure Monitor exporter switched on
by APPLICATIONINSIGHTS_CONNECTION_STRING, sending to a local stand-in for the ingestion endpoint."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from noisett_mcp import telemetry
from noisett_mcp.config import Settings
from noisett_mcp.schemas import GenerationRequest
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.telemetry import Telemetry, configure_logging
from noisett_mcp.telemetry.names import ALERTS, COLD_START_STAGE, ERRORS, GPU_METRICS
from tests.support import free_port, serve_asgi, wait_healthy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """The global tracer provider (the mcp SDK traces through it) with an in-memory exporter attached."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def make_service(
    make_settings: Callable[..., Settings], reader: InMemoryMetricReader
) -> Callable[..., Noisett]:
    """A service whose instruments report to this test's own metric reader."""
    instruments = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))

    def make(**overrides: Any) -> Noisett:
        return Noisett(make_settings(**overrides), telemetry=instruments)

    return make


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_a_generation_over_mcp_records_its_span_and_metrics(
    make_service: Callable[..., Noisett], reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    prompt = "a lighthouse at dusk, private brief 7731"
    async with make_service() as service, Client(build_server(service)) as client:
        result = await client.call_tool("generate_image", {"prompt": prompt, "steps": 2, "count": 2})
    assert not result.is_error
    images = result.structured_content["images"]
    assert [image["status"] for image in images] == ["done", "done"]

    points = _points(reader)
    expected = {"noisett.model": "demo", "noisett.variant": images[0]["variant"], "noisett.style": "none"}
    [duration] = points["noisett.generation.duration"]
    assert duration.count == 1 and duration.sum > 0 and dict(duration.attributes) == expected
    [wait] = points["noisett.queue.wait_time"]
    assert wait.count == 1 and wait.sum >= 0
    [generated] = points["noisett.images.generated"]
    assert generated.value == 2 and dict(generated.attributes) == expected
    [depth] = points["noisett.queue.depth"]
    assert depth.value == 0
    assert "noisett.errors" not in points

    finished = spans.get_finished_spans()
    [job] = [span for span in finished if span.name == "noisett.generate"]
    [call] = [span for span in finished if span.name == "tools/call generate_image"]
    # The job's span hangs under the MCP request that queued it, in the same trace.
    assert job.parent is not None and job.parent.span_id == call.context.span_id
    assert job.context.trace_id == call.context.trace_id
    assert job.attributes is not None
    assert job.attributes["noisett.status"] == "done" and job.attributes["noisett.images.done"] == 2
    assert job.attributes["noisett.steps"] == 2 and job.status.status_code is StatusCode.UNSET
    assert [event.name for event in job.events] == ["started"]
    assert prompt not in json.dumps(dict(job.attributes))  # prompts are never recorded


async def test_a_failed_model_load_counts_errors_by_kind(
    make_service: Callable[..., Noisett], reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    empty = tmp_path / "not-a-model"  # a local folder with no pipeline in it: loading fails, offline
    empty.mkdir()
    async with make_service(model=str(empty), llama_model=str(empty)) as service:
        async with Client(build_server(service)) as client:
            await client.call_tool("generate_image", {"prompt": "anything", "steps": 2})
        kind = service.runner.engine_error.split(":")[0]
    assert service.runner.engine_state == "error"

    errors = {point.attributes["noisett.operation"]: point for point in _points(reader)["noisett.errors"]}
    assert set(errors) == {"load", "generate"}
    assert {point.attributes["error.type"] for point in errors.values()} == {kind}
    assert errors["load"].value == 1 and errors["generate"].value == 1
    assert "noisett.images.generated" not in _points(reader)


async def test_queue_depth_counts_the_jobs_waiting_for_the_gpu(
    make_service: Callable[..., Noisett], reader: InMemoryMetricReader
) -> None:
    service = make_service()  # not started: no worker takes the jobs off the queue
    for _ in range(3):
        await service.submit(GenerationRequest(prompt="waiting", steps=1))
    try:
        [depth] = _points(reader)["noisett.queue.depth"]
        assert depth.value == 3 == service.queue.depth
    finally:
        await service.store.aclose()


JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImFiYyJ9.eyJhdWQiOiJhcGk6Ly94eXoiLCJ0aWQiOiJ0In0.c2lnbmF0dXJlLXBhcnQ"
ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LWJhc2U2NA=="
SAS_SIG = "Zm9vYmFyYmF6cXV4%2Bc2lnbmF0dXJl%3D"
IKEY = "8d3b1c9e-0000-4f6e-9a7b-5c4d3e2f1a0b"
HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def test_json_logs_carry_trace_ids_and_never_tokens_or_keys(
    spans: InMemorySpanExporter, make_settings: Callable[..., Settings]
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("noisett_mcp.test")
    connection = f"InstrumentationKey={IKEY};IngestionEndpoint=https://example.invalid/"
    with trace.get_tracer("test").start_as_current_span("request") as span:
        logger.info("calling back with Authorization: Bearer %s", JWT)
    logger.warning(
        "storage: %s",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=x",
    )
    logger.info("full image at https://acct.blob.core.windows.net/c/i.png?sv=2024-11-04&sp=r&sig=%s", SAS_SIG)
    logger.info("exporter ready", extra={"connection": connection, "replica": 2})
    logger.info('token reply {"access_token": "%s", "expires_in": 3599}', JWT[:40])
    logger.info(
        "settings %r, hf token %s", make_settings(applicationinsights_connection_string=connection), HF
    )
    try:
        raise RuntimeError(f"upload refused for ?se=2030&sig={SAS_SIG} with AccountKey={ACCOUNT_KEY}")
    except RuntimeError:
        logger.exception("upload failed")

    text = stream.getvalue()
    for secret in (JWT, JWT[:40], ACCOUNT_KEY, SAS_SIG, IKEY, HF):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "INFO", "INFO", "INFO", "INFO", "ERROR"]
    assert lines[0]["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert lines[0]["message"] == "calling back with Authorization: Bearer [REDACTED]"
    assert "AccountName=acct;AccountKey=[REDACTED]" in lines[1]["message"]
    assert lines[2]["message"].endswith("sp=r&sig=[REDACTED]")
    assert lines[3]["replica"] == 2 and lines[3]["connection"].startswith("InstrumentationKey=[REDACTED];")
    assert "RuntimeError: upload refused" in lines[6]["exception"] and "trace_id" not in lines[6]


async def test_without_a_connection_string_setup_leaves_telemetry_off(settings: Settings) -> None:
    before = trace.get_tracer_provider()
    assert telemetry.setup(settings) is False
    assert trace.get_tracer_provider() is before


# --- Azure Monitor, end to end: the real exporter, in a real server process ---
def _ingestion_app(received: list[dict[str, Any]]) -> Starlette:
    """Stands in for Application Insights' ingestion endpoint: accepts and keeps every envelope."""

    async def track(request: Request) -> JSONResponse:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        items = json.loads(body) if body.strip() else []
        items = items if isinstance(items, list) else [items]
        received.extend(items)
        return JSONResponse({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

    return Starlette(routes=[Route("/{path:path}", track, methods=["POST"])])


BURST = 20  # traced calls in a row


def _envelopes(received: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item["data"]["baseData"] for item in received if item.get("data", {}).get("baseType") == kind]


@pytest.mark.slow
async def test_connection_string_switches_on_azure_monitor_export(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("azure.monitor.opentelemetry")
    received: list[dict[str, Any]] = []
    async with serve_asgi(_ingestion_app(received)) as ingestion:
        connection = f"InstrumentationKey={IKEY};IngestionEndpoint={ingestion}/;LiveEndpoint={ingestion}/"
        port = free_port()
        env = {
            **os.environ,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": connection,
            # Keep the exporter on this machine: no statsbeat, no remote configuration, no VM metadata.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
            "TMPDIR": str(tmp_path),  # the exporter's retry files
            "NOISETT_MODEL": "demo",
            "NOISETT_DATA_DIR": str(settings.data_dir),
            "MODEL_CACHE_DIR": str(settings.model_cache_dir),
            "NOISETT_LOG_FORMAT": "json",
        }
        command = [sys.executable, "-m", "noisett_mcp", "serve", "--transport", "http", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        log_file = tmp_path / "server.log"
        with log_file.open("wb") as log:
            server = await anyio.open_process(command, env=env, stderr=log)
            try:
                await wait_healthy(base, timeout=60)
                async with Client(f"{base}/mcp") as client:
                    # A burst of calls, more than the distro's default sampler keeps (about 5 traces a
                    # second): every one of them must still be traced.
                    for _ in range(BURST):
                        await client.call_tool("list_styles", {})
                    result = await client.call_tool("generate_image", {"prompt": "exported", "steps": 2})
                assert not result.is_error
            finally:
                if server.returncode is None:
                    server.send_signal(signal.SIGTERM)  # uvicorn shuts down; the exporters flush at exit
                with anyio.move_on_after(60):
                    await server.wait()
                if server.returncode is None:
                    server.kill()
                    await server.wait()
        log_text = log_file.read_text(errors="replace")
        assert server.returncode == 0, log_text

    metric_names = {
        metric["name"] for data in _envelopes(received, "MetricData") for metric in data["metrics"]
    }
    assert {
        "noisett.generation.duration",
        "noisett.queue.wait_time",
        "noisett.images.generated",
        "noisett.queue.depth",
        # What the alert rules watch, under the names they use (noisett_mcp.telemetry.names.ALERTS); no error
        # and no GPU here.
        *(
            metric.name
            for alert in ALERTS
            for metric in alert.metrics
            if metric not in (ERRORS, *GPU_METRICS)
        ),
        COLD_START_STAGE.name,
    } <= metric_names
    assert not {metric.name for metric in GPU_METRICS} & metric_names  # no GPU here: absent, not zero
    dependencies = {data["name"] for data in _envelopes(received, "RemoteDependencyData")}
    requests = [data["name"] for data in _envelopes(received, "RequestData")]
    assert "noisett.generate" in dependencies, sorted(dependencies)
    assert "tools/call generate_image" in requests and requests.count("tools/call list_styles") == BURST
    messages = [data["message"] for data in _envelopes(received, "MessageData")]
    assert any("Azure Monitor" in message for message in messages)  # our logs go to Application Insights
    assert IKEY not in log_text and json.loads(log_text.splitlines()[0])["logger"]  # console: JSON, no key
