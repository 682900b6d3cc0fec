"""The in-process queue: jobs wait here and one worker task runs them on this process's GPU.

The line is fair between owners: each job gets a round (one more than its owner's last job still
waiting or running, and never behind the round now running), and the line is ordered by round, then by
arrival. So a caller who queues many jobs takes turns with everyone else, and someone new starts
after at most the job now running.
"""

from __future__ import annotations

import bisect
import time

import anyio

from noisett_mcp.errors import QueueFull, UserQueueFull
from noisett_mcp.jobs.base import Job, JobExecutor, Runner, StepTimer
from noisett_mcp.jobs.records import save_records


class LocalJobQueue:
    """In-process queue with a single worker task. The worker hands each image to a thread (the engine),
    so the event loop keeps serving list_styles, get_image and health checks while the GPU is busy."""

    durable = False

    def __init__(self, runner: JobExecutor, max_queue: int, max_per_user: int | None = None) -> None:
        self.runner: Runner | None = runner
        self._runner = runner
        self.max_queue = max_queue
        self.max_per_user = max_per_user or max_queue
        self._waiting: list[Job] = []  # in the order they will run
        self._keys: list[tuple[int, int]] = []  # (round, arrival) of each waiting job, sorted
        self._rounds: dict[Job, int] = {}  # of the waiting jobs and the running one
        self._arrivals = 0
        self._round_now = 0  # the round of the job that started last
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
        return time.monotonic() - min(job.created for job in self._waiting) if self._waiting else None

    def waiting_of(self, owner: str) -> int:
        return sum(1 for job in self._waiting if job.owner == owner)

    async def ensure_room(self, job: Job) -> None:
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(len(self._waiting), self._steps_left_all())
        if (mine := self.waiting_of(job.owner)) >= self.max_per_user:
            raise UserQueueFull(mine, self.max_per_user, self._eta_of_owner_next(job.owner))

    async def submit(self, job: Job) -> None:
        await self.ensure_room(job)
        own = [r for j, r in self._rounds.items() if j.owner == job.owner]
        round_ = max(self._round_now, max(own, default=-1) + 1)
        self._rounds[job] = round_
        key = (round_, self._arrivals)
        self._arrivals += 1
        at = bisect.bisect(self._keys, key)
        self._keys.insert(at, key)
        self._waiting.insert(at, job)
        self._wakeup.set()

    async def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if job in self._waiting:
            self._remove(job)
            job.finish("cancelled", "cancelled before it started")
            # It never reaches the runner: its final record is written here, or it would say `queued`.
            try:
                with anyio.CancelScope(shield=True):
                    await save_records(self._runner.store, job)
            finally:
                job.settle()

    def _remove(self, job: Job) -> None:
        at = self._waiting.index(job)
        del self._waiting[at], self._keys[at]
        self._rounds.pop(job, None)

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

    def _eta_of_owner_next(self, owner: str) -> float:
        """Seconds until the owner's first waiting job starts (then it has room again)."""
        first = next((job for job in self._waiting if job.owner == owner), None)
        if first is None:
            return 0.0
        return max(0.0, self.eta(first) - self.timer.estimate(first.total_steps))

    async def aclose(self) -> None:
        self._runner.close()

    async def run(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            job = self._waiting[0]
            self._round_now = self._rounds[job]
            del self._waiting[0], self._keys[0]
            self._running = job
            try:
                await self._runner.execute(job)
                if job.status == "done" and job.started is not None and job.finished_at is not None:
                    self.timer.record(job.finished_at - job.started, job.total_steps)
            finally:
                self._running = None
                self._rounds.pop(job, None)
            if not self._waiting:
                await self._runner.release_memory()
