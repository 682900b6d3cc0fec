"""GPU utilization and memory from NVML (`nvidia-ml-py`, imported as `pynvml`: the binding that
`torch.cuda.utilization` uses too), sampled on a thread of its own and read by observable gauges.

NVML calls block (each is a driver call, and a busy or wedged driver can hold one for long), so they never run
on the event loop or inside a metric collection: a daemon thread samples every `interval` seconds, and the
gauges' callbacks only read the last sample. Without NVML, or without a GPU, there is no sampler at all, and
the gauges report nothing: no observation, never a zero that would read as an idle GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from noisett_mcp.telemetry import names

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter

log = logging.getLogger(__name__)

# Seconds between samples: faster would cost the driver for nothing (NVML's utilization is itself an average
# over its last 1/6 s to 1 s); slower would miss a minutes-long busy spell in a 15-minute alert window.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 60.0


@dataclass(frozen=True)
class GpuSample:
    uuid: str
    name: str
    utilization_percent: int
    memory_used: int
    memory_total: int

    @property
    def attributes(self) -> dict[str, str]:
        return {names.GPU_ID: self.uuid, names.GPU_NAME: self.name}


def check_interval(seconds: float) -> float:
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise ValueError(
            f"the GPU sampling interval must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds, "
            f"not {seconds:g}"
        )
    return seconds


class GpuSampler:
    """Samples every GPU that NVML sees, every `interval` seconds, on a daemon thread."""

    def __init__(self, nvml: Any, handles: Sequence[Any], interval: float) -> None:
        self.interval = check_interval(interval)
        self._nvml = nvml
        self._handles = list(handles)
        self._samples: tuple[GpuSample, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noisett-gpu-sampler", daemon=True)
        self._failed = False

    @classmethod
    def start(cls, interval: float) -> GpuSampler | None:
        """A running sampler, or None where NVML is not installed or finds no GPU (a CPU machine)."""
        check_interval(interval)
        nvml = _import_nvml()
        if nvml is None:
            return None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:  # no driver: a CPU machine, or a container without the GPU mounted
            log.debug("NVML unavailable, no GPU metrics: %s", exc)
            return None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.warning("NVML lists no GPU, no GPU metrics: %s", exc)
            handles = []
        if not handles:
            nvml.nvmlShutdown()
            return None
        sampler = cls(nvml, handles, interval)
        sampler._thread.start()
        return sampler

    @property
    def samples(self) -> tuple[GpuSample, ...]:
        """The last sample of each GPU (empty until the first one, or after NVML failed)."""
        return self._samples

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def close(self) -> None:
        """Stop sampling (at the end of the current sample, if one is under way) and release NVML."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 5)
        self._samples = ()
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples = self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> tuple[GpuSample, ...]:
        nvml = self._nvml
        try:
            samples = []
            for handle in self._handles:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                samples.append(
                    GpuSample(
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        utilization_percent=int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                        memory_used=int(memory.used),
                        memory_total=int(memory.total),
                    )
                )
        except nvml.NVMLError as exc:
            # A lost GPU (Xid error, driver reset) reports nothing rather than its last, stale figures.
            if not self._failed:
                log.warning("NVML sampling failed, GPU metrics paused: %s", exc)
            self._failed = True
            return ()
        self._failed = False
        return tuple(samples)


def register_gpu_gauges(meter: Meter, samples: Callable[[], Sequence[GpuSample]]) -> None:
    """The gauges of `names.GPU_METRICS` on `meter`: each reads `samples()`, never NVML, when collected."""
    from opentelemetry.metrics import Observation  # here: the sampler alone runs without OpenTelemetry

    def gauge(metric: names.Metric, value: Callable[[GpuSample], int]) -> None:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(sample), sample.attributes) for sample in samples()]

        meter.create_observable_gauge(
            metric.name, callbacks=[observe], unit=metric.unit, description=metric.description
        )

    gauge(names.GPU_UTILIZATION, lambda sample: sample.utilization_percent)
    gauge(names.GPU_MEMORY_USAGE, lambda sample: sample.memory_used)
    gauge(names.GPU_MEMORY_LIMIT, lambda sample: sample.memory_total)


def _import_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")  # nvidia-ml-py: the `gpu` extra, and the GPU image
    except ImportError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # nvidia-ml-py before 11.5 returns bytes
