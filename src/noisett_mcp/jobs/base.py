"""Jobs and the queue seam: one worker per GPU, bounded, cancellable.

`JobQueue` is the seam for scale-out: `LocalJobQueue` (local.py) runs jobs in this process on a
`JobExecutor` (the GPU room's `gpu.runner.JobRunner`, handed in by whoever composes the service);
`AzureJobQueue` (azure.py) hands them to GPU workers elsewhere. The front sees a queue's runner only as
a `Runner`: the few questions it may ask of this process's GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskGroup

from noisett_mcp.auth.caller import LOCAL_OWNER
from noisett_mcp.errors import ModelUnavailable
from noisett_mcp.health import EngineHealth, EngineState
from noisett_mcp.schemas import FINISHED, GenerationSpec, Status
from noisett_mcp.storage.base import ImageStore

if TYPE_CHECKING:
    from PIL import Image


@dataclass(eq=False)
class Job:
    """One generate_image request: `count` images, rendered in one batch or one after another."""

    id: str
    spec: GenerationSpec
    image_ids: list[str]
    owner: str = LOCAL_OWNER
    status: Status = "queued"
    steps_done: int = 0  # image-steps over all images (a step of a batch of k counts k); worker thread
    images_done: int = 0
    batch: range = range(0)  # the images rendering together in one pipeline call now, if any
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    started: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    waited_for_model: bool = False  # it reached the runner before the model was ready (for progress)
    # Image-to-image: the source's bytes, kept here for this process's runner (a queue message is too
    # small for them: a worker elsewhere loads them from the store).
    source: bytes | None = field(default=None, repr=False)
    # The source fitted to the rendered size when it was checked here (decoded once, off the engine).
    fitted_source: Image.Image | None = field(default=None, repr=False)
    done: anyio.Event = field(default_factory=anyio.Event)
    settled: anyio.Event = field(default_factory=anyio.Event)  # finished, and its final records saved
    # Serializes writes of the job's records: a progress write must never land after the final one.
    records_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def total_steps(self) -> int:
        return self.spec.denoise_steps * len(self.image_ids)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def image_status(self, index: int) -> Status:
        return "done" if index < self.images_done else self.status

    def finish(self, status: Status, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = time.monotonic()
        self.done.set()

    def settle(self) -> None:
        """Its final records are written: the store answers for it from now on."""
        self.settled.set()


class StepTimer:
    """Seconds per denoising step, from recent jobs: the basis of every time estimate."""

    def __init__(self, initial: float = 1.0, weight: float = 0.3) -> None:
        self.seconds_per_step = initial
        self._weight = weight
        self._measured = False

    def record(self, seconds: float, steps: int) -> None:
        if steps <= 0:
            return
        sample = seconds / steps
        if self._measured:
            self.seconds_per_step += self._weight * (sample - self.seconds_per_step)
        else:
            self.seconds_per_step, self._measured = sample, True

    def estimate(self, steps: int) -> float:
        return steps * self.seconds_per_step


class Runner(Protocol):
    """What the front may ask of this process's GPU runner: the rendered size, its part of /health,
    a background model load, and whether the model can load here at all."""

    @property
    def engine_state(self) -> EngineState:
        """Where the model load stands: `loading` is shown as a progress phase."""

    @property
    def unavailable(self) -> ModelUnavailable | None:
        """Set once the model cannot load in this process: every later request fails with it."""

    def render_geometry(self) -> tuple[int, int]:
        """(side, multiple) of the rendered size, known before the model loads."""

    def health(self) -> EngineHealth:
        """The engine's part of /health."""

    def loading_text(self) -> str:
        """The progress message while the model loads: `loading the model: 31 of 58 GiB`."""

    def start_preload(self, task_group: TaskGroup) -> None:
        """Load the model in the background (idempotent)."""


class JobExecutor(Runner, Protocol):
    """What a local queue needs of the runner it runs jobs on."""

    @property
    def store(self) -> ImageStore:
        """Where the runner writes images and records (the queue writes a cancelled job's there)."""

    async def execute(self, job: Job) -> None:
        """Run one job to the end; never raises (a failure is recorded on the job)."""

    async def release_memory(self) -> None:
        """Give freed memory back between jobs."""

    def close(self) -> None:
        """Release the runner's thread once its calls are done."""


class JobQueue(Protocol):
    timer: StepTimer
    durable: bool  # True when jobs outlive this process (a distributed queue)
    runner: Runner | None  # what renders the jobs in this process; None where workers do

    @property
    def oldest_age(self) -> float | None:
        """Seconds the oldest waiting job has waited, where the queue knows."""

    async def ensure_room(self, job: Job) -> None:
        """Raise QueueFull at once if the queue has no room for another job."""

    async def submit(self, job: Job) -> None:
        """Queue a job (after ensure_room)."""

    async def cancel(self, job: Job) -> None:
        """Drop a queued job, or stop a running one at its next step."""

    def position(self, job: Job) -> int | None:
        """How many jobs are ahead of a queued job (0: next); None once it runs."""

    @property
    def depth(self) -> int:
        """Jobs waiting, not counting the running one."""

    @property
    def running(self) -> Job | None:
        """The job this process is running, if any."""

    @property
    def waiting(self) -> tuple[Job, ...]:
        """The jobs this process holds in line."""

    def eta(self, job: Job) -> float:
        """Seconds until the job is likely done."""

    async def run(self) -> None:
        """The worker loop; runs until cancelled."""

    async def aclose(self) -> None:
        """Release what the queue holds open (an Azure client's connections)."""
