"""The deployment guide's key metrics with the real OpenTelemetry SDK: an in-memory metric reader and span
exporter around real demo-model generations through a real MCP client session. And the NVML sampler, against
a fake `pynvml` module (only on a machine without a GPU, where the real one has nothing to read)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
import safetensors.torch
from mcp import Client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from noisett_mcp.config import Settings, demo_model_folder
from noisett_mcp.engine.demo import write_demo_model
from noisett_mcp.engine.demo_loras import demo_transformer, write_random_lora
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.telemetry import Telemetry, names
from noisett_mcp.telemetry.cold_start import seconds_since_process_start
from noisett_mcp.telemetry.gpu import MAX_INTERVAL, MIN_INTERVAL, GpuSampler
from tests.azurite import Azurite, blob_settings
from tests.support import add_style
from tests.test_blob_sync import container

pytestmark = pytest.mark.anyio

PROMPT = "a lighthouse at dusk, private brief kestrel"  # no digits: timestamps hold any
GPU_NAMES = {metric.name for metric in names.GPU_METRICS}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def instruments(reader: InMemoryMetricReader, spans: InMemorySpanExporter) -> Telemetry:
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    return Telemetry(meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracing)


def collect(reader: InMemoryMetricReader) -> tuple[dict[str, list[Any]], str]:
    """{metric name: data points} of one collection, and the collection as JSON."""
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points, data.to_json() if data else ""


async def test_a_generation_records_its_latency_per_image_and_per_request_and_never_the_prompt(
    make_settings: Callable[..., Settings], instruments: Telemetry, reader: InMemoryMetricReader
) -> None:
    async with (
        Noisett(make_settings(), telemetry=instruments) as service,
        Client(build_server(service)) as client,
    ):
        arguments = {"prompt": PROMPT, "steps": 2, "count": 2, "style": "demo-flat"}
        result = await client.call_tool("generate_image", arguments)
    assert not result.is_error, result.content[0].text
    variant = result.structured_content["images"][0]["variant"]

    points, text = collect(reader)
    expected = {names.MODEL: "demo", names.VARIANT: variant, names.STYLE: "demo-flat"}
    [per_image] = points[names.IMAGE_DURATION.name]
    assert per_image.count == 2 and per_image.sum > 0 and dict(per_image.attributes) == expected
    [per_request] = points[names.GENERATION_DURATION.name]
    assert per_request.count == 1 and dict(per_request.attributes) == expected
    assert per_image.sum <= per_request.sum  # the images' GPU time is part of the request's
    [requests] = points[names.REQUESTS.name]
    assert requests.value == 1 and dict(requests.attributes) == {**expected, names.STATUS: "done"}
    assert names.ERRORS.name not in points
    assert "lighthouse" not in text and "kestrel" not in text  # prompts are never recorded


@pytest.fixture
def alien_adapter(model_cache: Path, tmp_path: Path) -> Path:
    """A LoRA whose keys match no module of the demo transformer: only the loaded model can refuse it."""
    good = write_random_lora(demo_transformer(model_cache), tmp_path / "good.safetensors", seed=1)
    tensors = safetensors.torch.load_file(good)
    alien = tmp_path / "alien.safetensors"
    safetensors.torch.save_file(
        {k.replace(".attn1.", ".attn9."): v.clone() for k, v in tensors.items()}, alien
    )
    return alien


async def test_a_failed_generation_counts_an_error_of_its_kind_over_the_requests(
    make_settings: Callable[..., Settings],
    instruments: Telemetry,
    reader: InMemoryMetricReader,
    alien_adapter: Path,
) -> None:
    settings = make_settings()
    add_style(settings.resolved_styles_dir, "alien", alien_adapter)
    async with Noisett(settings, telemetry=instruments) as service, Client(build_server(service)) as client:
        failed = await client.call_tool("generate_image", {"prompt": PROMPT, "steps": 2, "style": "alien"})
        done = await client.call_tool("generate_image", {"prompt": PROMPT, "steps": 2})
    assert failed.is_error and "alien.toml" in failed.content[0].text
    assert not done.is_error

    points, _ = collect(reader)
    [error] = points[names.ERRORS.name]
    assert dict(error.attributes) == {
        names.MODEL: "demo",
        names.VARIANT: "fast",
        names.STYLE: "alien",
        names.ERROR_TYPE: "StyleRefused",
        names.OPERATION: "generate",
    }
    assert error.value == 1
    requests = {point.attributes[names.STATUS]: point.value for point in points[names.REQUESTS.name]}
    assert requests == {"failed": 1, "done": 1}  # an error rate of 1 in 2: what the alert's query computes


async def test_the_cold_start_counts_from_the_process_start_with_its_stages_in_order(
    make_settings: Callable[..., Settings],
    instruments: Telemetry,
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
) -> None:
    async with Noisett(make_settings(), telemetry=instruments) as service:
        before = seconds_since_process_start()
        await service.runner.engine()
        after = seconds_since_process_start()

    points, _ = collect(reader)
    [total] = points[names.COLD_START.name]
    assert total.count == 1 and before <= total.sum <= after  # this process started long before the load
    stages = {point.attributes[names.STAGE]: point.sum for point in points[names.COLD_START_STAGE.name]}
    assert stages["component transformer"] > 0 and stages["imports"] > 0
    assert sum(stages.values()) == pytest.approx(total.sum)
    [span] = [span for span in spans.get_finished_spans() if span.name == "noisett.cold_start"]
    # The load's own stages (weights/stages.py), after whatever came before the process's first stage.
    events = [event.name for event in span.events]
    assert events[:4] == ["startup", "imports", "settings", "first byte"] and events[-2:] == [
        "warm-up",
        "ready",
    ]
    assert all(event.startswith("component ") for event in events[4:-2]) and set(events) == set(stages)


async def test_a_blob_model_streams_and_its_cold_start_carries_the_streamed_stages(
    make_settings: Callable[..., Settings],
    azurite: Azurite,
    model_cache: Path,
    tmp_path: Path,
    instruments: Telemetry,
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
) -> None:
    source = write_demo_model(demo_model_folder(model_cache))
    models = f"models-{secrets.token_hex(4)}"
    async with container(azurite, models) as blobs:
        for path in sorted(path for path in source.rglob("*") if path.is_file()):
            await blobs.upload_blob(f"demo/{path.relative_to(source).as_posix()}", path.read_bytes())
    settings = make_settings(
        **blob_settings(azurite), model=f"blob://{models}/demo", model_cache_dir=tmp_path / "empty-cache"
    )
    async with Noisett(settings, telemetry=instruments) as service:
        await service.runner.engine()

    # Unquantized, a Blob model streams from Blob (engine/streaming.py): no sync to the cache first. (With
    # NOISETT_QUANTIZE, which needs a GPU, a `sync` stage comes before `imports`.)
    [span] = [span for span in spans.get_finished_spans() if span.name == "noisett.cold_start"]
    events = [event.name for event in span.events]
    assert events[:4] == ["startup", "imports", "settings", "first byte"] and "sync" not in events
    points, _ = collect(reader)
    stages = {point.attributes[names.STAGE]: point.sum for point in points[names.COLD_START_STAGE.name]}
    assert stages["first byte"] > 0 and stages["component transformer"] > 0
    [total] = points[names.COLD_START.name]
    assert sum(stages.values()) == pytest.approx(total.sum)


def test_cold_start_stages_reported_by_the_loader_are_recorded_in_their_order(
    instruments: Telemetry, reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    stages = [("startup", 4.0), ("sync", 30.0), ("download", 0.5), ("load", 25.5)]
    instruments.record_cold_start(60.0, stages)
    [span] = spans.get_finished_spans()
    assert [
        (event.name, dict(event.attributes or {})["noisett.cold_start.seconds"]) for event in span.events
    ] == (stages)
    assert span.start_time is not None and span.end_time is not None
    times = [span.start_time, *(event.timestamp for event in span.events)]
    assert times == sorted(times) and span.end_time - span.start_time == pytest.approx(60e9, rel=1e-6)
    points, _ = collect(reader)
    [total] = points[names.COLD_START.name]
    assert total.sum == 60.0
    recorded = {point.attributes[names.STAGE]: point.sum for point in points[names.COLD_START_STAGE.name]}
    assert recorded == dict(stages)


# --- GPU utilization and memory, from NVML ---
class FakeNvml(types.ModuleType):
    """Stands in for `pynvml` on a machine without a GPU: the calls the sampler makes, and which thread made
    each device query."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: int = 2, driver: bool = True) -> None:
        super().__init__("pynvml")
        self.gpus, self.driver, self.lost = gpus, driver, False
        self.inits = self.shutdowns = 0
        self.query_threads: list[threading.Thread] = []

    def nvmlInit(self) -> None:
        self.inits += 1
        if not self.driver:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def _query(self) -> None:
        self.query_threads.append(threading.current_thread())
        if self.lost:
            raise self.NVMLError("GPU is lost")

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self._query()
        return SimpleNamespace(gpu=91 + handle, memory=30)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._query()
        return SimpleNamespace(used=(handle + 1) << 30, total=141 << 30, free=0)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"  # nvidia-ml-py before 11.5 returns bytes


def _has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    if _has_gpu():
        pytest.skip("this machine has a GPU: the fake NVML would hide the real one")
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    yield fake


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Until `condition()` holds (the sampler's thread works at its own pace); fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the sampler did not get there"
        time.sleep(0.01)


def test_the_sampler_reads_nvml_on_its_own_thread_and_the_gauges_read_its_last_sample(
    fake_nvml: FakeNvml, instruments: Telemetry, reader: InMemoryMetricReader
) -> None:
    sampler = GpuSampler.start(MIN_INTERVAL)
    assert sampler is not None
    try:
        instruments.watch_gpu(sampler)
        wait_for(lambda: len(sampler.samples) == 2)
        points, _ = collect(reader)
        # Collecting reads the cached sample: every NVML query ran on the sampler's thread, none on this one
        # (where the event loop, or the exporter's collection, would run).
        assert set(fake_nvml.query_threads) == {sampler.thread}
        assert threading.current_thread() not in fake_nvml.query_threads
        for index in range(2):
            attributes = {names.GPU_ID: f"GPU-{index:08d}", names.GPU_NAME: "NVIDIA H200"}
            values = {
                name: [p.value for p in points[name] if dict(p.attributes) == attributes]
                for name in GPU_NAMES
            }
            assert values == {
                names.GPU_UTILIZATION.name: [91 + index],
                names.GPU_MEMORY_USAGE.name: [(index + 1) << 30],
                names.GPU_MEMORY_LIMIT.name: [141 << 30],
            }
    finally:
        sampler.close()
    assert not sampler.thread.is_alive() and fake_nvml.shutdowns == 1
    points, _ = collect(reader)
    assert not any(points.get(name) for name in GPU_NAMES)  # a closed sampler reports nothing


def test_a_lost_gpu_reports_nothing_rather_than_its_last_figures(fake_nvml: FakeNvml) -> None:
    sampler = GpuSampler.start(MIN_INTERVAL)
    assert sampler is not None
    try:
        wait_for(lambda: bool(sampler.samples))
        fake_nvml.lost = True
        wait_for(lambda: not sampler.samples)
        fake_nvml.lost = False
        wait_for(lambda: bool(sampler.samples))  # and it recovers with the GPU
    finally:
        sampler.close()


def test_without_nvml_or_a_gpu_there_is_no_sampler(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvml.driver = False  # the library is installed, but no driver is there (a CPU machine)
    assert GpuSampler.start(5) is None
    fake_nvml.driver, fake_nvml.gpus = True, 0  # a driver with no GPU in this container
    assert GpuSampler.start(5) is None and fake_nvml.shutdowns == 1
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    assert GpuSampler.start(5) is None


def test_the_sampling_interval_is_bounded(fake_nvml: FakeNvml) -> None:
    for seconds in (0, 0.5, 61, 3600):
        with pytest.raises(ValueError, match=rf"between 1 and 60 seconds, not {seconds:g}$"):
            GpuSampler.start(seconds)
        with pytest.raises(pydantic.ValidationError, match="gpu_sample_seconds"):
            Settings(gpu_sample_seconds=seconds)
    assert fake_nvml.inits == 0  # refused before NVML was touched
    assert Settings(gpu_sample_seconds=MIN_INTERVAL).gpu_sample_seconds == MIN_INTERVAL
    assert Settings(gpu_sample_seconds=MAX_INTERVAL).gpu_sample_seconds == MAX_INTERVAL


async def test_on_a_cpu_no_gpu_instrument_reports_a_value(
    fake_nvml: FakeNvml,
    make_settings: Callable[..., Settings],
    instruments: Telemetry,
    reader: InMemoryMetricReader,
) -> None:
    # NVML would answer here (the fake reports two GPUs), but the model runs on the CPU: no GPU metric at all.
    async with (
        Noisett(make_settings(), telemetry=instruments) as service,
        Client(build_server(service)) as client,
    ):
        result = await client.call_tool("generate_image", {"prompt": PROMPT, "steps": 2})
        assert not result.is_error and service.runner.device == "cpu"
    points, _ = collect(reader)
    assert names.IMAGE_DURATION.name in points
    assert not GPU_NAMES & set(points) and fake_nvml.inits == 0


def test_the_gpu_benchmark_line_says_that_a_cpu_machine_sends_no_gpu_metric() -> None:
    if _has_gpu():
        pytest.skip("this machine has a GPU: benchmarks/gpu/nvml_check.py compares it with nvidia-smi")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "nvml_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nvml check: no GPU or no nvidia-ml-py here: the sampler does not start")
