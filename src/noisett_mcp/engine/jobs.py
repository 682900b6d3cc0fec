"""The generation queue: one worker per GPU, bounded, cancellable. No torch here.

`JobQueue` is the seam for scale-out: `LocalJobQueue` runs jobs in this process; a distributed queue
(front and GPU workers apart) implements the same methods.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import anyio

from noisett_mcp.models import FINISHED, GenerationSpec, Status


class GenerationCancelled(Exception):
    """Raised inside a job (by the engine's step callback): denoising stops at the next step."""


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: float) -> None:
        self.waiting = waiting
        self.retry_after = retry_after
        super().__init__(
            f"The image server is busy: {waiting} generation(s) are already waiting, the most it queues. "
            f"Retry in about {max(1, round(retry_after))} s."
        )


@dataclass(eq=False)
class Job:
    """One generate_image request: `count` images rendered one after another."""

    id: str
    spec: GenerationSpec
    image_ids: list[str]
    owner: str = "local"
    status: Status = "queued"
    steps_done: int = 0  # over all images; written by the worker thread
    images_done: int = 0
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    started: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    # Serializes writes of the job's records: a progress write must never land after the final one.
    records_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def total_steps(self) -> int:
        return self.spec.steps * len(self.image_ids)

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


class JobQueue(Protocol):
    timer: StepTimer
    durable: bool  # True when jobs outlive this process (a distributed queue)
    oldest_age: float | None  # seconds the oldest waiting job has waited, where the queue knows

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


class LocalJobQueue:
    """In-process queue with a single worker task. The worker hands each image to a thread (the engine),
    so the event loop keeps serving list_styles, get_image and health checks while the GPU is busy."""

    durable = False

    def __init__(self, execute: Callable[[Job], Awaitable[None]], max_queue: int) -> None:
        self._execute = execute
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._wakeup = anyio.Event()
        self.timer = StepTimer()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def waiting(self) -> tuple[Job, ...]:
        return tuple(self._waiting)

    @property
    def oldest_age(self) -> float | None:
        return time.monotonic() - self._waiting[0].created if self._waiting else None

    async def ensure_room(self, job: Job) -> None:
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(len(self._waiting), self._steps_left_all())

    async def submit(self, job: Job) -> None:
        await self.ensure_room(job)
        self._waiting.append(job)
        self._wakeup.set()

    async def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if job in self._waiting:
            self._waiting.remove(job)
            job.finish("cancelled", "cancelled before it started")

    def position(self, job: Job) -> int | None:
        try:
            return self._waiting.index(job) + (1 if self._running else 0)
        except ValueError:
            return None

    def eta(self, job: Job) -> float:
        if job.finished:
            return 0.0
        ahead = 0
        if job is not self._running:
            if self._running:
                ahead += self._running.total_steps - self._running.steps_done
            for other in self._waiting:
                if other is job:
                    break
                ahead += other.total_steps
        return self.timer.estimate(ahead + job.total_steps - job.steps_done)

    def _steps_left_all(self) -> float:
        steps = sum(job.total_steps for job in self._waiting)
        if self._running:
            steps += self._running.total_steps - self._running.steps_done
        return self.timer.estimate(steps)

    async def run(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            job = self._waiting.popleft()
            self._running = job
            try:
                await self._execute(job)
                if job.status == "done" and job.started is not None and job.finished_at is not None:
                    self.timer.record(job.finished_at - job.started, job.total_steps)
            finally:
                self._running = None
