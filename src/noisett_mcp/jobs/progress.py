"""Turns a job's state into MCP progress notifications, whose values must strictly increase."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from noisett_mcp.jobs.base import Job, JobQueue

LOADING = "loading the model"

ProgressFn = Callable[[float, float, str], Awaitable[None]]


class ProgressReporter:
    """Before the first step (queued, loading) progress climbs towards 1 without reaching it; then
    every denoising step is reported, including any that ran between two polls."""

    def __init__(self, queue: JobQueue, job: Job, report: ProgressFn | None) -> None:
        self.queue, self.job, self.report = queue, job, report
        self.steps_reported = 0
        self.phases_reported = 0
        self.last_phase = ""

    async def update(self) -> None:
        job = self.job
        if self.report is None:
            return
        if job.steps_done == 0 and not job.finished:
            phase = self.phase()
            if phase != self.last_phase:
                self.phases_reported += 1
                self.last_phase = phase
                await self.report(1 - 1 / (self.phases_reported + 1), job.total_steps, phase)
            return
        while self.steps_reported < job.steps_done:
            self.steps_reported = min(self.next_step(self.steps_reported), job.steps_done)
            await self.report(self.steps_reported, job.total_steps, self.step_message(self.steps_reported))

    def phase(self) -> str:
        position = self.queue.position(self.job)
        if position is not None:
            return f"queued, {position} ahead" if position else "queued, next"
        runner = self.queue.runner
        # Out of the line and no model yet (not loaded, loading, or unloaded when idle): the job waits for
        # the load, whether or not it has begun by this poll.
        if runner is not None and runner.engine_state in ("idle", "loading", "unloaded"):
            return runner.loading_text()
        if self.job.waited_for_model and not self.last_phase.startswith(LOADING):
            return LOADING  # a load shorter than a poll: the user still learns that the job waited for it
        return "starting"

    def next_step(self, reported: int) -> int:
        """The image-step count after the next denoising step: a step of a batch of k advances it by k."""
        batch, per_image = self.job.batch, self.job.spec.denoise_steps
        start = batch.start * per_image
        if batch and reported >= start:
            return start + ((reported - start) // len(batch) + 1) * len(batch)
        return reported + 1

    def step_message(self, steps: int) -> str:
        per_image, count, batch = self.job.spec.denoise_steps, len(self.job.image_ids), self.job.batch
        if batch and steps > batch.start * per_image:
            step = -(-(steps - batch.start * per_image) // len(batch))  # rounded up
            return f"images {batch.start + 1}–{batch.stop}/{count}, step {step}/{per_image}"
        image, step = divmod(steps - 1, per_image)
        return f"image {image + 1}/{count}, step {step + 1}/{per_image}"
