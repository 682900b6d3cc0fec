"""The in-process queue: jobs wait here and one worker task runs them on this process's GPU."""

from __future__ import annotations

import time
from collections import deque

import anyio

from noisett_mcp.errors import QueueFull
from noisett_mcp.jobs.base import Job, StepTimer
from noisett_mcp.jobs.runner import JobRunner


class LocalJobQueue:
    """In-process queue with a single worker task. The worker hands each image to a thread (the engine),
    so the event loop keeps serving list_styles, get_image and health checks while the GPU is busy."""

    durable = False

    def __init__(self, runner: JobRunner, max_queue: int) -> None:
        self.runner: JobRunner | None = runner
        self._runner = runner
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

    async def aclose(self) -> None:
        pass  # nothing held open

    async def run(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            job = self._waiting.popleft()
            self._running = job
            try:
                await self._runner.execute(job)
                if job.status == "done" and job.started is not None and job.finished_at is not None:
                    self.timer.record(job.finished_at - job.started, job.total_steps)
            finally:
                self._running = None
