"""The stages of a cold start, from process start to a model ready to render: what each took, in seconds
and bytes. Torch-free: /healthz and generate_image's progress read it while the engine thread loads.

Stages, in order: `imports` (process start to the engine's libraries imported), `settings`, `first byte`
(the model's small files: configs and tokenizers), one `component <name>` each, `warm-up`, `ready`.
Each stage ends when the next begins, with one log line: its seconds, bytes and GiB/s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

try:
    from opentelemetry import trace

    tracer: Any = trace.get_tracer("noisett_mcp.load")
except ImportError:  # the GPU benchmarks' machine carries the engine without OpenTelemetry
    tracer = None

GIB = 1024**3
# The fallback where /proc is missing (not Linux): the import of this module, early in every command.
_IMPORTED = time.monotonic()


def process_age() -> float:
    """Seconds since the kernel started this process (Linux: /proc/self/stat), else since this import.
    The cold-start metric's clock too (telemetry/cold_start.py): the stages and its total count alike."""
    started = _process_start_since_boot()
    if started is not None:
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    return time.monotonic() - _IMPORTED


def _process_start_since_boot() -> float | None:
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22, `starttime`, in clock ticks after boot. Field 2 (the command) may hold spaces and
        # parentheses, so count from the last ')': the text after it starts at field 3.
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[22 - 3]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def describe_bytes(loaded: int, total: int) -> str:
    """`31 of 58 GiB` (MiB below a GiB: the demo model is a few MiB)."""
    if total >= GIB:
        return f"{loaded / GIB:.0f} of {total / GIB:.0f} GiB"
    return f"{loaded / 2**20:.1f} of {total / 2**20:.1f} MiB"


@dataclass(frozen=True)
class LoadProgress:
    """Where the running (or last) model load stands (weights/stages.py): its stage, the bytes read out of
    the total, the seconds so far, and each stage with its seconds and bytes."""

    stage: str
    bytes_loaded: int
    bytes_total: int
    seconds: float
    stages: tuple[dict[str, Any], ...]

    def body(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "bytes_loaded": self.bytes_loaded,
            "bytes_total": self.bytes_total,
            "seconds": self.seconds,
            "stages": list(self.stages),
        }


@dataclass
class Stage:
    name: str
    started: float  # seconds since process start
    seconds: float | None = None  # None while it runs
    bytes: int = 0
    span: Any = None  # an OpenTelemetry span (a no-op one where telemetry is off)

    def as_dict(self) -> dict[str, Any]:
        gib_s = self.bytes / GIB / self.seconds if self.seconds and self.bytes else None
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "bytes": self.bytes,
            "gib_per_s": round(gib_s, 3) if gib_s is not None else None,
        }


class LoadStages:
    """One model load's stages. Safe to update from the reader threads and read from the event loop."""

    def __init__(self, *, since_process_start: bool = True) -> None:
        # Time zero is the process's start for the first load; a reload (after an idle unload) starts at 0.
        self.since_process_start = since_process_start
        # The age first: read after it, the clock never puts the origin before the process's start.
        age = process_age() if since_process_start else 0.0
        self._origin = time.monotonic() - age
        self._lock = threading.Lock()
        self.stages: list[Stage] = []
        self.bytes_loaded = 0
        self.bytes_total = 0

    def now(self) -> float:
        return time.monotonic() - self._origin

    @property
    def current(self) -> str:
        return self.stages[-1].name if self.stages else "waiting"

    def begin(self, name: str, *, started: float | None = None) -> None:
        """End the running stage (one log line) and start `name`."""
        with self._lock:
            now = self.now()
            self._end_running(now)
            begun = now if started is None else started
            # The span starts now even for a stage back-dated to the process start (imports): its true
            # length is the `noisett.load.seconds` attribute.
            span = tracer.start_span(f"noisett.load {name}") if tracer is not None else None
            self.stages.append(Stage(name, begun, span=span))

    def finish(self) -> None:
        """End the running stage, and mark the model ready."""
        self.begin("ready")
        with self._lock:
            self.stages[-1].seconds = 0.0
            if self.stages[-1].span is not None:
                self.stages[-1].span.end()
        log.info("model ready %.1f s after %s", self.stages[-1].started, self._zero_name())

    def expect(self, total_bytes: int) -> None:
        with self._lock:
            self.bytes_total = total_bytes

    def add(self, count: int) -> None:
        """`count` more bytes read (into the running stage)."""
        with self._lock:
            self.bytes_loaded += count
            if self.stages:
                self.stages[-1].bytes += count

    def progress_text(self) -> str:
        """For generate_image's progress while it waits: `loading the model: 31 of 58 GiB`."""
        with self._lock:
            loaded, total = self.bytes_loaded, self.bytes_total
        if not total:
            return f"loading the model ({self.current})"
        return f"loading the model: {describe_bytes(loaded, total)}"

    def snapshot(self) -> LoadProgress:
        """For /healthz: the running stage, bytes loaded out of the total, and each stage so far."""
        with self._lock:
            return LoadProgress(
                stage=self.current,
                bytes_loaded=self.bytes_loaded,
                bytes_total=self.bytes_total,
                seconds=round(self.now(), 3),
                stages=tuple(stage.as_dict() for stage in self.stages),
            )

    def durations(self) -> list[tuple[str, float]]:
        """(stage, seconds) of each ended stage, in order: the cold-start metric's stages."""
        with self._lock:
            return [(stage.name, stage.seconds) for stage in self.stages if stage.seconds is not None]

    def _end_running(self, now: float) -> None:
        if not self.stages or self.stages[-1].seconds is not None:
            return
        stage = self.stages[-1]
        stage.seconds = now - stage.started
        if stage.span is not None:
            stage.span.set_attributes(
                {"noisett.load.bytes": stage.bytes, "noisett.load.seconds": stage.seconds}
            )
            stage.span.end()
        rate = f", {stage.bytes / GIB / stage.seconds:.2f} GiB/s" if stage.bytes and stage.seconds else ""
        log.info(
            "cold start: %s took %.2f s (%.3f GiB%s)", stage.name, stage.seconds, stage.bytes / GIB, rate
        )

    def _zero_name(self) -> str:
        return "the process started" if self.stages and self.stages[0].name == "imports" else "the load began"
